/**
 * Agent reconnect after a control-plane crash: a real Docker agent with 3 running sessions; the
 * gateway is killed with SIGKILL and started again (Stack.restartApi), and the time from the kill
 * to the agent's next "registered successfully" log line is measured. Repeated 5 times. A session
 * is lost if afterwards its database state is not running, its container is not running, or its
 * VNC server does not answer RFB (directly, and at the end through the new gateway's tunnel).
 */
import { rfbGreeting } from '../agents/docker/driver';
import { createSession, fmtMs, fmtSummary, log, Metric, ms, now, pollState, sleep, Stack, summarize, withStack } from './common';
import { RfbClient } from './rfb';

const NAME = 'reconnect';
const SESSIONS = 3;
const ROUNDS = 5;

/** Sessions that did not survive: ids with the reason. */
async function lostSessions(stack: Stack, ids: string[]): Promise<string[]> {
  const lost: string[] = [];
  for (const id of ids) {
    const r = await stack.pool.query<{ state: string }>('SELECT state FROM sessions WHERE id = $1', [id]);
    const [c] = await stack.containers(id);
    const port = Number(c?.Labels['io.streamspace.vnc-port']);
    const rfb = port ? await rfbGreeting({ host: '127.0.0.1', port }, 2000).catch((e: Error) => e.message) : 'no port';
    if (r.rows[0]?.state !== 'running' || c?.State !== 'running' || rfb !== 'RFB 003.008\n')
      lost.push(`${id} (db ${r.rows[0]?.state}, container ${c?.State ?? 'missing'}, vnc ${JSON.stringify(rfb)})`);
  }
  return lost;
}

export async function reconnectBench(): Promise<Metric[]> {
  return withStack(`bench-${NAME}`, {}, async (stack) => {
    const agent = await stack.startDockerAgent('bench-docker-reconnect', { VNC_PORT_RANGE: '16050-16069' });
    const token = await stack.login();
    const ids: string[] = [];
    for (let i = 0; i < SESSIONS; i++) {
      const id = await createSession(stack, token);
      await pollState(stack, token, id, 'running', 20);
      ids.push(id);
    }

    const toRegistered: number[] = [];
    const apiUp: number[] = [];
    const lostEver = new Set<string>();
    for (let round = 0; round < ROUNDS; round++) {
      // Listen before the kill: the agent may re-register before restartApi returns.
      const registered = agent.waitForLog(/registered successfully/, 60_000);
      registered.catch(() => undefined);
      const t0 = now();
      await stack.restartApi(); // SIGKILL, then start, then wait for "Server started"
      apiUp.push(ms(t0));
      await registered;
      toRegistered.push(ms(t0));
      for (const l of await lostSessions(stack, ids)) lostEver.add(l.split(' ')[0]);
      log(NAME, `round ${round + 1}: kill → gateway up ${fmtMs(apiUp[round])}, kill → agent registered ${fmtMs(toRegistered[round])}`);
      await sleep(500);
    }

    // Last word after things settle: state through the API, and VNC through the new gateway.
    await sleep(2000);
    const finalLost = await lostSessions(stack, ids);
    for (const id of ids) {
      await pollState(stack, token, id, 'running', 20, 5000).catch(() => lostEver.add(id));
      const r = await stack.call<{ url: string }>('POST', `/api/v1/sessions/${id}/vnc-ticket`, undefined, token);
      const greeting =
        r.status === 201
          ? await RfbClient.websocket(`ws://127.0.0.1:${stack.apiPort}${r.body.url}`)
              .then((c) => c.greeting())
              .catch((e: Error) => e.message)
          : `ticket ${r.status}`;
      if (greeting !== 'RFB 003.008\n') {
        lostEver.add(id);
        log(NAME, `session ${id}: tunnel after restarts said ${JSON.stringify(greeting)}`);
      }
    }
    for (const l of finalLost) {
      lostEver.add(l.split(' ')[0]);
      log(NAME, `lost: ${l}`);
    }

    const reg = summarize(toRegistered);
    const up = summarize(apiUp);
    log(NAME, `kill → gateway up:       ${fmtSummary(up)}`);
    log(NAME, `kill → agent registered: ${fmtSummary(reg)}`);
    log(NAME, `sessions lost: ${lostEver.size} of ${SESSIONS}`);
    return [
      {
        metric: 'agent reconnect after control-plane restart (kill -9)',
        ours: `p50 ${fmtMs(reg.p50)}, max ${fmtMs(reg.max)} (gateway boot p50 ${fmtMs(up.p50)}); ${lostEver.size}/${SESSIONS} sessions lost`,
        target: '< 2 s, 0 sessions lost',
        peer: '23 s (spec)',
      },
    ];
  });
}
