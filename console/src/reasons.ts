/** Plain words for why a session failed or an action was refused; the raw message stays available as details. */
const RULES: Array<[RegExp, string]> = [
  [
    /no capacity|no agent (has|with) (room|capacity)|capacity exhausted/i,
    'No agent has room for a new session right now. Try again later or ask an administrator to add capacity.',
  ],
  [
    /start timed out|timed out waiting|did not start|deadline exceeded|expired/i,
    'The desktop did not start in time. Try again; if it keeps happening, ask an administrator to check the agents.',
  ],
  [/withdrawn|cancelled by a stop|canceled by a stop/i, 'Stopped before it finished starting.'],
  [/unknown template|template .*not found/i, 'This session’s template no longer exists in the catalog. Start a new session from the catalog.'],
  [
    /no (online )?agent|agent (is )?offline|agent .*disconnected|no agents? (for|on) platform/i,
    'No agent for this platform is online. Ask an administrator to check the agents.',
  ],
  [
    /quota|limit reached|too many sessions/i,
    'You have reached your session quota. Stop a session you no longer need, or ask an administrator for a larger quota.',
  ],
  [/image .*(not found|pull)|pull access denied|manifest unknown/i, 'The desktop image could not be downloaded. Ask an administrator to check the template.'],
  [/workflow not started|Temporal unreachable|no longer managed/i, 'The control plane could not run this session. Try again in a moment.'],
  [/container (vanished|disappeared|removed)|exited unexpectedly/i, 'The desktop stopped unexpectedly.'],
];

export function plainReason(raw: string | null | undefined): string {
  const text = (raw ?? '').trim();
  if (!text) return 'Failed for an unknown reason.';
  for (const [re, words] of RULES) if (re.test(text)) return words;
  return text;
}

/** True when plainReason() rephrased the message (the raw one is worth a "details" disclosure). */
export function hasPlainWords(raw: string | null | undefined): boolean {
  const text = (raw ?? '').trim();
  return !!text && plainReason(text) !== text;
}
