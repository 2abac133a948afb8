/**
 * Runs the benchmarks against the real stack (PostgreSQL, Temporal, dockerd on 127.0.0.1) one
 * after another and prints our figures next to the DESIGN "Bars to clear" targets and the
 * spec/peer figures. No thresholds are asserted: the table is the output.
 *
 *   npm run bench                       the default set
 *   npm run bench -- --scale            capacity: scale (10,000 sessions), dispatch, relay, idle agents
 *   node dist/bench/run.js --only=vnc   one of: dispatch, session-start, reconnect, vnc, migration, console
 */
import os from 'node:os';
import { Metric, ms, now, stopActiveStacks } from './common';
import { consoleBench } from './console';
import { dispatchBench } from './dispatch';
import { idleAgentsBench } from './idle-agents';
import { migrationBench } from './migration';
import { reconnectBench } from './reconnect';
import { relayBench } from './relay';
import { scaleBench } from './scale';
import { sessionStartBench } from './session-start';
import { vncBench } from './vnc';

const BENCHES: Record<string, () => Promise<Metric[]>> = {
  dispatch: dispatchBench,
  'session-start': sessionStartBench,
  reconnect: reconnectBench,
  vnc: vncBench,
  relay: relayBench,
  migration: migrationBench,
  console: consoleBench,
  'idle-agents': idleAgentsBench,
  scale: scaleBench,
};

/** `--scale`: issue 14's capacity figures in one run (not part of the default set: ~15 min). */
const SCALE_SET = ['scale', 'dispatch', 'relay', 'idle-agents'];
const DEFAULT_SET = ['dispatch', 'session-start', 'reconnect', 'vnc', 'migration', 'console'];

function table(rows: Metric[]): string {
  const head: Metric = { metric: 'metric', ours: 'ours', target: 'target', peer: 'spec / peers' };
  const cols = ['metric', 'ours', 'target', 'peer'] as const;
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[head, ...rows].map((r) => r[c].length))])) as Record<(typeof cols)[number], number>;
  const line = (r: Metric) => '| ' + cols.map((c) => r[c].padEnd(width[c])).join(' | ') + ' |';
  const sep = '|' + cols.map((c) => '-'.repeat(width[c] + 2)).join('|') + '|';
  return [line(head), sep, ...rows.map(line)].join('\n');
}

async function main(): Promise<number> {
  const only = process.argv.find((a) => a.startsWith('--only='))?.slice('--only='.length);
  if (only && !BENCHES[only]) {
    process.stderr.write(`unknown bench "${only}"; one of: ${Object.keys(BENCHES).join(', ')}\n`);
    return 2;
  }
  const names = only ? [only] : process.argv.includes('--scale') ? SCALE_SET.filter((n) => BENCHES[n]) : DEFAULT_SET.filter((n) => BENCHES[n]);
  const rows: Metric[] = [];
  let failed = 0;
  const tAll = now();
  for (const name of names) {
    process.stdout.write(`\n=== ${name} ===\n`);
    const t = now();
    try {
      rows.push(...(await BENCHES[name]()));
    } catch (err) {
      failed++;
      process.stderr.write(`[${name}] FAILED: ${(err as Error).stack ?? err}\n`);
      rows.push({ metric: name, ours: `FAILED: ${(err as Error).message.slice(0, 120)}`, target: '', peer: '' });
    }
    process.stdout.write(`[${name}] took ${(ms(t) / 1000).toFixed(1)} s\n`);
  }
  process.stdout.write(`\n=== summary (${(ms(tAll) / 1000).toFixed(0)} s, node ${process.version}, ${os.cpus().length} CPUs) ===\n${table(rows)}\n`);
  return failed || process.exitCode ? 1 : 0;
}

// Interrupted: stop the running Stack's children and containers before leaving.
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`\n${sig}: cleaning up\n`);
    void stopActiveStacks().finally(() => process.exit(130));
  });
}
// A closed stdout (| head) must not kill the run before it cleans up.
process.stdout.on('error', () => undefined);

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
