/** The body of each phase of the runbook (the order is in ../migration.ts). */
import { ApplicationFailure, condition, sleep } from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import type { RouteSet } from '../../activities/migration/routing-state';
import type { V1Columns } from '../../activities/migration/activities';
import { MigrationOptions, PhaseName, STRATEGY_PHASES } from '../migration-api';
import { heavy, importer, quick, waiting } from './activities';
import { runImportChild } from './import';
import { msOf, ROUTING_SETTLE, Run } from './run';

const V1_NOBODY: RouteSet = { mode: 'v1', users: [], percent: 0 };
const EVERYONE: RouteSet = { mode: 'v2', users: [], percent: 100 };

/** v1's own columns of the tables the import writes (from the backup's schema snapshot). */
function v1Columns(run: Run): V1Columns {
  const out: V1Columns = {};
  for (const t of ['sessions', 'templates']) {
    const cols = run.manifest?.schema.tables[t];
    if (cols) out[t] = cols.map((c) => c.name);
  }
  return out;
}

export async function preflight(run: Run): Promise<void> {
  const report = await quick.preflight(run.o);
  const failed = report.checks.filter((c) => !c.ok);
  run.phaseOf('preflight').detail = report.checks.map((c) => `${c.ok ? 'ok' : 'FAIL'} ${c.name}: ${c.detail}`).join('\n');
  run.p.plan = plan(run.o, report.counts);
  if (failed.length) throw ApplicationFailure.nonRetryable(`preflight failed: ${failed.map((c) => `${c.name} (${c.detail})`).join('; ')}`);
}

export async function backup(run: Run): Promise<void> {
  const m = await heavy.backup(run.o);
  run.manifest = m;
  run.phaseOf('backup').detail = `${m.dir}: ${m.files.length} files; snapshot ${m.snapshot}; ${Object.entries(m.tables)
    .filter(([t]) => ['users', 'sessions', 'templates'].includes(t))
    .map(([t, s]) => `${t}=${s.count}`)
    .join(', ')} (${Object.keys(m.tables).length} tables checksummed)`;
}

export async function maintenance(run: Run): Promise<void> {
  run.done.v1Scaled = [...new Set([...run.done.v1Scaled, ...run.o.v1.deployments])];
  await quick.scaleDeployments(run.o, Object.fromEntries(run.o.v1.deployments.map((d) => [d, 0])));
  run.phaseOf('maintenance').detail = `v1 scaled to 0: ${run.o.v1.deployments.join(', ')}`;
}

export async function schema(run: Run): Promise<void> {
  run.done.schemaTouched = true;
  const r = await heavy.migrateSchema(run.o);
  run.phaseOf('schema').detail = `applied ${r.applied.join(', ') || 'nothing'}; verified ${r.verified.join('; ')}`;
}

export async function agents(run: Run): Promise<void> {
  const found = await waiting(run.o.agentWaitTimeout).waitForAgents(run.o);
  run.phaseOf('agents').detail = Object.entries(found)
    .map(([pl, ids]) => `${pl}: ${ids.join(', ')}`)
    .join('; ');
}

/** Everything v1 has, page by page; sessions are adopted later, as their users move (cut-over). */
export async function importAll(run: Run): Promise<void> {
  const { total } = await importer.prepareImport(run.o);
  run.p.import.total = total;
  const t = await runImportChild(run.o, 'import', { mode: 'all', adopt: false }, v1Columns(run), { pass: 'templates', ns: 0 });
  Object.assign(run.p.import, { processed: t.processed, imported: t.imported, failed: t.failed });
  run.phaseOf('import').detail = `${t.imported} sessions and templates imported, ${t.failed} not (see failures) in ${t.pages} pages`;
}

/**
 * Users move to v2 cohort by cohort, then all at once. For each move: import what v1 changed for
 * the moving users since the import (and adopt their sessions), switch the routing, let it settle,
 * and import again whatever v1 wrote for them meanwhile. Nothing v1 wrote is left behind.
 */
export async function cutover(run: Run): Promise<void> {
  const o = run.o;
  const cohorts = o.strategy === 'blue-green' ? o.cohorts : [];
  let before = V1_NOBODY;
  const users: string[] = [];
  let percent = 0;
  for (const c of cohorts) {
    users.push(...(c.users ?? []));
    percent = Math.max(percent, c.percent ?? 0);
    const after: RouteSet = { mode: 'cohorts', users: [...users], percent };
    await move(run, c.name, before, after);
    run.phaseOf('cutover').detail = `${c.name}: ${users.length} named users + ${percent}% on v2`;
    await run.waitApproval(c.name);
    before = after;
  }
  await move(run, 'full', before, EVERYONE);
  run.phaseOf('cutover').detail = `full switch: everyone on v2${run.p.import.delta ? `; delta imports re-imported ${run.p.import.delta.reimported}` : ''}`;
}

async function move(run: Run, name: string, before: RouteSet, after: RouteSet): Promise<void> {
  const o = run.o;
  run.p.cohort = name;
  const imports = STRATEGY_PHASES[o.strategy].includes('import');
  const delta = (suffix: string) =>
    runImportChild(o, `delta-${name}${suffix}`, { mode: 'delta', before, after, adopt: true }, v1Columns(run), { pass: 'crds', ns: 0 });
  const add = (t: { processed: number; imported: number; adopted: number }) => {
    const d = run.deltaTotals;
    d.processed += t.processed;
    d.reimported += t.imported;
    d.adopted += t.adopted;
    run.p.import.delta = { ...d };
  };
  if (imports) add(await delta(''));
  run.done.routed = true;
  await quick.setRouting({ ...after, v1ApiUrl: o.v1.apiUrl, runId: o.runId, cohort: name });
  if (imports) {
    await sleep(ROUTING_SETTLE);
    add(await delta('-catchup'));
  }
}

export async function decommission(run: Run): Promise<void> {
  const o = run.o;
  const ph = run.phaseOf('decommission');
  run.p.decommissionAt = new Date(Date.now() + msOf(o.decommissionAfter)).toISOString();
  run.p.status = 'waiting-to-decommission';
  run.show();
  await condition(() => run.keepV1, o.decommissionAfter as Duration);
  run.p.status = 'running';
  if (run.keepV1) {
    ph.status = 'skipped';
    ph.detail = 'cancelled by the operator: v1 kept';
    return;
  }
  run.done.v1Scaled = [...new Set([...run.done.v1Scaled, ...o.v1.deployments])];
  await quick.scaleDeployments(o, Object.fromEntries(o.v1.deployments.map((d) => [d, 0])));
  run.done.crdsDeleted = true;
  const deleted = await quick.deleteV1Crds(o);
  const archive = await heavy.writeArchive(o, { ...run.p, phases: run.p.phases });
  ph.detail = `v1 scaled to 0; deleted CRDs ${deleted.join(', ') || '(none)'}; archive ${archive}`;
}

export function plan(o: MigrationOptions, counts: { dbSessions: number; crdSessions: number; crdTemplates: number }): string[] {
  const lines: Record<PhaseName, string> = {
    preflight: `preflight: v1 API ${o.v1.apiUrl}, database, CRDs in ${o.v1.namespaces.join(', ')}; v2 ${o.v2.readyUrl}`,
    backup: `backup: pg_dump from an exported snapshot (checksums from the same snapshot) + CRDs, Deployments, Secret into ${o.backupDir}/${o.runId} with sha256 manifest`,
    maintenance: `maintenance: scale v1 (${o.v1.deployments.join(', ')}) to 0 for the window`,
    schema: 'schema: apply migrations/ in order (additive: v1 keeps serving) and run the spec verification queries',
    agents: `agents: wait (up to ${o.agentWaitTimeout}) for an online agent on ${o.v2.platforms.join(', ')}`,
    import: `import: ${counts.crdTemplates} template CRDs; ${counts.crdSessions} Session CRDs and ${counts.dbSessions} database rows, pages of ${o.importBatchSize}`,
    cutover:
      o.strategy === 'blue-green'
        ? `cutover: ${o.cohorts.map((c) => `${c.name} (${c.users?.length ? c.users.length + ' users' : ''}${c.percent ? (c.users?.length ? ' + ' : '') + c.percent + '%' : ''})`).join(' → ')} → full, each after a delta import of what v1 wrote for the moving users; approval ${o.approval.mode}${o.approval.mode === 'auto' ? ` after ${o.approval.soak} soak` : ''}`
        : 'cutover: everyone to v2 at once (after a delta import)',
    decommission: `decommission: after ${o.decommissionAfter}, scale v1 to 0, delete v1 CRDs, archive the backup`,
  };
  return STRATEGY_PHASES[o.strategy].map((n) => lines[n]);
}
