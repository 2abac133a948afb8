/**
 * The chaos run (issue 10, item 6): `npm run chaos` (or `node dist/bench/chaos.js --sessions=200
 * --concurrency=30`). 4 fake agents and a real Docker agent, 2 API pods, 2 workers; sessions churn
 * through create → hibernate → wake → stop while an API pod, a worker and an agent are killed
 * (-9), PostgreSQL and Redis are restarted and an agent is frozen past its deadlines. Prints the
 * per-fault table (test/harness/chaos.ts explains the counters) and writes it to
 * test-artifacts/chaos-run.txt. Exits 1 if anything was lost, executed twice or left divergent,
 * or a fault did not recover.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { activeChaosStacks, chaosReport, runChaos } from '../test/harness/chaos';
import { ROOT } from '../test/harness/stack';

function arg(name: string, dflt: number): number {
  const a = process.argv.find((x) => x.startsWith(`--${name}=`));
  return a ? Number(a.slice(name.length + 3)) : dflt;
}

async function main(): Promise<number> {
  const r = await runChaos({
    testName: 'chaos-bench',
    sessions: arg('sessions', 200),
    concurrency: arg('concurrency', 30),
    thinkMs: arg('think-ms', 1000),
  });
  const report = chaosReport(r);
  process.stdout.write(`\n=== chaos run ===\n${report}\n`);
  mkdirSync(path.join(ROOT, 'test-artifacts'), { recursive: true });
  writeFileSync(path.join(ROOT, 'test-artifacts', 'chaos-run.txt'), report + '\n');
  const bad = r.ops.lost + r.executedTwice + r.duplicateSessions + r.divergent + r.faults.filter((f) => f.error || f.recoverMs === null).length;
  return bad ? 1 : 0;
}

for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`\n${sig}: cleaning up\n`);
    void Promise.all([...activeChaosStacks].map((s) => s.stop().catch(() => undefined))).finally(() => process.exit(130));
  });
}
process.stdout.on('error', () => undefined);

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
