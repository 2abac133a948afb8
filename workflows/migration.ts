/**
 * The spec's v1 → v2 runbook as one durable run (`migration/<runId>`). Phases run in the
 * strategy's order, each in its own module (./migration/phases.ts, activities in
 * activities/migration/phases/); a failed phase blocks (visible, with its reason) until an
 * operator retries, rolls back or aborts. A rollback undoes what was done, newest first. Worker
 * or control-plane restarts replay the workflow: finished phases do not run again; the import
 * (a child workflow, paged, continue-as-new) resumes at the page that had not finished.
 *
 * Runbook (blue-green):
 *   1. preflight     read-only checks and the plan (a dry run stops here and writes nothing)
 *   2. backup        pg_dump + checksums from one snapshot, CRDs, Deployments, Secret, manifest
 *   3. schema        additive migrations; v1 keeps serving from the same tables
 *   4. agents        an online v2 agent on every platform
 *   5. import        every v1 Template/Session (CRDs and rows), paged, per-row results
 *   6. cutover       per cohort: delta import of what v1 wrote for the moving users, adopt their
 *                    sessions, route them (every route) to v2, catch-up import; approval; … full
 *   7. decommission  after a durable timer: v1 to 0, v1 CRDs deleted, backup archived
 *
 * Rollback (newest first):
 *   route everyone to v1 (and let every gateway see it) → scale v2 down (never the worker running
 *   this) → export what v2 created → undo v2's database changes (v1's writes since the backup
 *   stay; restore-from-dump into a new database as the last resort) → restore v1 CRDs → v1
 *   replicas as the backup manifest recorded
 */
import type { MigrationOptions, MigrationProgress, PhaseName } from './migration-api';
import * as phase from './migration/phases';
import * as undo from './migration/rollback';
import { checkOptions, Run } from './migration/run';

export async function migrationWorkflow(input: MigrationOptions): Promise<MigrationProgress> {
  checkOptions(input);
  const run = new Run(input);
  const p = run.p;

  const runbook: Record<PhaseName, () => Promise<void>> = {
    preflight: () => phase.preflight(run),
    backup: () => phase.backup(run),
    maintenance: () => phase.maintenance(run),
    schema: () => phase.schema(run),
    agents: () => phase.agents(run),
    import: () => phase.importAll(run),
    cutover: () => phase.cutover(run),
    decommission: () => phase.decommission(run),
  };
  if ((await run.runPhases(runbook)) === 'planned') return p;

  if (run.rollbackRequested) {
    p.status = 'rolling-back';
    run.show();
    const { done, manifest } = run;
    await run.step('route everyone to v1', () => undo.routeEveryoneToV1(run));
    if (input.v2.deployments.length) await run.step('scale v2 down', () => undo.stopV2(run));
    if (done.schemaTouched && manifest) {
      await run.step('export data created on v2', () => undo.exportV2Data(run));
      await undo.restoreDatabase(run);
    }
    if (done.crdsDeleted && manifest) await run.step('restore v1 CRDs', () => undo.restoreV1Crds(run));
    if (done.v1Scaled.length && manifest) await run.step('scale v1 up (replicas from the backup manifest)', () => undo.scaleV1Up(run));
    for (const ph of p.phases) if (ph.status === 'done') ph.status = 'compensated';
    p.status = 'rolled-back';
    p.blockedReason = p.rollback.some((s) => s.status === 'failed') ? 'some rollback steps failed: see rollback' : null;
  } else {
    p.status = run.abortRequested ? 'aborted' : 'completed';
  }
  p.phase = null;
  run.show();
  return p;
}
