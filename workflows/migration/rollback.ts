/** The compensation steps of a rollback (their order is in ../migration.ts). */
import { patched, sleep } from '@temporalio/workflow';
import { compensation } from './activities';
import { innermost, ROUTING_SETTLE, Run } from './run';

/**
 * Everyone back on v1, and the gateways' routing caches expired before anything else is undone:
 * until then a gateway may still serve a user on v2, and what v2 writes must be in the export.
 * (Runs recorded before the wait existed replay without it.)
 */
export async function routeEveryoneToV1(run: Run): Promise<string> {
  await compensation.setRouting({ mode: 'v1', users: [], percent: 0, v1ApiUrl: run.o.v1.apiUrl, runId: run.o.runId, cohort: null });
  if (!patched('rollback-routing-settles')) return 'all users → v1';
  await sleep(ROUTING_SETTLE);
  return `all users → v1 (every gateway after ${ROUTING_SETTLE})`;
}

export async function stopV2(run: Run): Promise<string> {
  const r = await compensation.stopV2(run.o);
  const scaled = Object.entries(r.scaled).map(([d, n]) => `${d} ${n}→0`);
  return [...scaled, ...r.kept.map((d) => `${d} kept (it runs this rollback)`)].join(', ');
}

export async function exportV2Data(run: Run): Promise<string> {
  const r = await compensation.exportV2Data(run.o);
  return `${r.sessions} v2 sessions, agents, commands and the import's records saved to ${r.file}`;
}

/**
 * The database back to v1: undo v2's additive changes (v1's writes since the backup stay); if
 * that cannot be verified, or the operator asked for it, restore the dump (into a new database,
 * verified, then swapped in; the current one is kept under another name).
 */
export async function restoreDatabase(run: Run): Promise<void> {
  const m = run.manifest!;
  if (run.rollbackOptions.database !== 'restore') {
    const undone = await run.step("undo v2's database changes (v1's writes kept)", () => compensation.undoV2Changes(run.o, m));
    if (undone) return;
  } else run.skip("undo v2's database changes (v1's writes kept)", 'the operator asked for a restore from the dump');
  await run.step('restore the database from the backup (last resort: a new database, verified, then swapped)', async () => {
    const r = await compensation.restoreDatabase(run.o, m);
    const t = r.tables;
    return `${['users', 'sessions', 'templates']
      .filter((x) => t[x])
      .map((x) => `${x}=${t[x].count}`)
      .join(', ')}: checksums match the backup; the database before the restore is kept as ${r.keptAs}`;
  });
}

export async function restoreV1Crds(run: Run): Promise<string> {
  return `${await compensation.restoreV1Crds(run.o, run.manifest!)} objects restored`;
}

export async function scaleV1Up(run: Run): Promise<string> {
  const back = await compensation.restoreReplicas(run.o, run.manifest!, run.done.v1Scaled);
  return Object.entries(back)
    .map(([d, n]) => `${d}=${n}`)
    .join(', ');
}

export { innermost };
