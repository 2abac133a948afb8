/**
 * The spec's v1 → v2 runbook as one durable run: phases run in order, each an activity with its
 * own retry policy; a failed phase blocks (visible, with its reason) until an operator retries,
 * rolls back or aborts; a rollback undoes what was done, newest first. Worker or control-plane
 * restarts replay the workflow: finished phases are not run again, and the import resumes at
 * the first batch that had not finished.
 */
import {
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  proxyActivities,
  setHandler,
  sleep,
  upsertMemo,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { Duration } from '@temporalio/common';
import type { BackupManifest, MigrationActivities } from '../activities/migration/activities';
import {
  abortSignal,
  approveSignal,
  cancelDecommissionSignal,
  MigrationOptions,
  MigrationProgress,
  PhaseName,
  progressQuery,
  retrySignal,
  rollbackUpdate,
  STRATEGY_PHASES,
} from './migration-api';
import { SA } from './search-attributes';

const quick = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '2m',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 5 },
});
const heavy = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '30m',
  heartbeatTimeout: '2m',
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1m', maximumAttempts: 3 },
});
const importer = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '10m',
  heartbeatTimeout: '1m',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 10 },
});

export async function migrationWorkflow(o: MigrationOptions): Promise<MigrationProgress> {
  const order = STRATEGY_PHASES[o.strategy];
  const p: MigrationProgress = {
    runId: o.runId,
    strategy: o.strategy,
    status: 'running',
    phase: null,
    phases: order.map((name) => ({ name, status: 'pending' })),
    import: { total: 0, processed: 0, imported: 0, failed: 0, failures: [] },
    cohort: null,
    awaitingApproval: null,
    blockedReason: null,
    decommissionAt: null,
    rollback: [],
    plan: [],
  };
  const approvals = new Set<string>();
  let retryRequested = false;
  let rollbackRequested = false;
  let abortRequested = false;
  let keepV1 = false;
  let scope: CancellationScope | null = null;
  let manifest: BackupManifest | null = null;
  // What a rollback must undo, in the order it was done (undone in reverse).
  const done = { schemaTouched: false, v1Scaled: null as Record<string, number | null> | null, crdsDeleted: false };

  const phaseOf = (name: PhaseName) => p.phases.find((x) => x.name === name)!;
  const show = () => {
    upsertSearchAttributes([{ key: SA.migrationPhase, value: p.phase ? `${p.phase}:${p.status}` : p.status }]);
    upsertMemo({ phase: p.phase, status: p.status, cohort: p.cohort, blocked: p.blockedReason });
  };

  setHandler(progressQuery, () => p);
  setHandler(approveSignal, (what?: string) => void approvals.add(what ?? p.awaitingApproval ?? '*'));
  setHandler(retrySignal, () => void (retryRequested = true));
  setHandler(cancelDecommissionSignal, () => void (keepV1 = true));
  setHandler(abortSignal, () => {
    abortRequested = true;
    scope?.cancel();
  });
  setHandler(
    rollbackUpdate,
    (reason: string) => {
      if (!rollbackRequested) {
        rollbackRequested = true;
        p.blockedReason = reason ? `rollback requested: ${reason}` : 'rollback requested';
        scope?.cancel();
      }
      return p;
    },
    {
      validator: (_reason: string) => {
        if (p.status === 'rolled-back' || p.status === 'aborted' || p.status === 'completed')
          throw ApplicationFailure.nonRetryable(`the run is ${p.status}: nothing to roll back`);
      },
    },
  );

  const approved = (name: string) => approvals.has(name) || approvals.has('*');

  async function waitApproval(name: string): Promise<void> {
    p.awaitingApproval = name;
    p.status = 'awaiting-approval';
    show();
    if (o.approval.mode === 'auto') {
      for (;;) {
        if (await condition(() => approved(name), o.approval.soak as Duration)) break;
        const gates = await quick.checkHealthGates(o);
        if (gates.ok) break;
        p.blockedReason = `health gates failed for ${name}: ${gates.reasons.join('; ')} (approve to override)`;
        show();
      }
    } else {
      await condition(() => approved(name));
    }
    approvals.delete('*');
    p.awaitingApproval = null;
    p.blockedReason = null;
    p.status = 'running';
    show();
  }

  const phases: Record<PhaseName, () => Promise<void>> = {
    async preflight() {
      const report = await quick.preflight(o);
      const failed = report.checks.filter((c) => !c.ok);
      phaseOf('preflight').detail = report.checks.map((c) => `${c.ok ? 'ok' : 'FAIL'} ${c.name}: ${c.detail}`).join('\n');
      p.plan = plan(o, report.counts);
      if (failed.length) throw ApplicationFailure.nonRetryable(`preflight failed: ${failed.map((c) => `${c.name} (${c.detail})`).join('; ')}`);
    },
    async backup() {
      manifest = await heavy.backup(o);
      phaseOf('backup').detail = `${manifest.dir}: ${manifest.files.length} files; ${Object.entries(manifest.tables)
        .map(([t, s]) => `${t}=${s.count}`)
        .join(', ')}`;
    },
    async maintenance() {
      const targets = Object.fromEntries(o.v1.deployments.map((d) => [d, 0]));
      done.v1Scaled = { ...(done.v1Scaled ?? {}), ...(await quick.scaleDeployments(o, targets)) };
      phaseOf('maintenance').detail = `v1 scaled to 0: ${o.v1.deployments.join(', ')}`;
    },
    async schema() {
      done.schemaTouched = true;
      const r = await heavy.migrateSchema(o);
      phaseOf('schema').detail = `applied ${r.applied.join(', ') || 'nothing'}; verified ${r.verified.join('; ')}`;
    },
    async agents() {
      const agents = await proxyActivities<MigrationActivities>({
        startToCloseTimeout: o.agentWaitTimeout as Duration,
        heartbeatTimeout: '30s',
        retry: { maximumAttempts: 1 },
      }).waitForAgents(o);
      phaseOf('agents').detail = Object.entries(agents)
        .map(([pl, ids]) => `${pl}: ${ids.join(', ')}`)
        .join('; ');
    },
    async import() {
      const planned = await importer.planImport(o);
      p.import.total = planned.sessionIds.length;
      p.import.failures.push(...planned.templates.failures);
      phaseOf('import').detail = `templates: ${planned.templates.imported} imported, ${planned.templates.failed} failed`;
      for (let i = p.import.processed; i < planned.sessionIds.length; i += o.importBatchSize) {
        const batch = planned.sessionIds.slice(i, i + o.importBatchSize);
        const r = await importer.importSessions(o, batch);
        p.import.processed = Math.min(planned.sessionIds.length, i + batch.length);
        p.import.imported += r.imported;
        p.import.failed += r.failed;
        p.import.failures.push(...r.failures.slice(0, Math.max(0, 1000 - p.import.failures.length)));
        if (o.importPaceMs > 0) await sleep(o.importPaceMs);
      }
    },
    async cutover() {
      const cohorts = o.strategy === 'blue-green' ? o.cohorts : [];
      const users: string[] = [];
      let percent = 0;
      for (const c of cohorts) {
        p.cohort = c.name;
        users.push(...(c.users ?? []));
        percent = Math.max(percent, c.percent ?? 0);
        await quick.setRouting({ mode: 'cohorts', v1ApiUrl: o.v1.apiUrl, users: [...users], percent, runId: o.runId, cohort: c.name });
        phaseOf('cutover').detail = `${c.name}: ${users.length} named users + ${percent}% on v2`;
        await waitApproval(c.name);
      }
      p.cohort = 'full';
      await quick.setRouting({ mode: 'v2', v1ApiUrl: o.v1.apiUrl, users: [], percent: 100, runId: o.runId, cohort: 'full' });
      phaseOf('cutover').detail = 'full switch: everyone on v2';
    },
    async decommission() {
      const at = Date.now() + msOf(o.decommissionAfter);
      p.decommissionAt = new Date(at).toISOString();
      p.status = 'waiting-to-decommission';
      show();
      await condition(() => keepV1, o.decommissionAfter as Duration);
      p.status = 'running';
      if (keepV1) {
        phaseOf('decommission').status = 'skipped';
        phaseOf('decommission').detail = 'cancelled by the operator: v1 kept';
        return;
      }
      const targets = Object.fromEntries(o.v1.deployments.map((d) => [d, 0]));
      done.v1Scaled = { ...(await quick.scaleDeployments(o, targets)), ...(done.v1Scaled ?? {}) };
      done.crdsDeleted = true;
      const deleted = await quick.deleteV1Crds(o);
      const archive = await quick.writeArchive(o, { ...p, phases: p.phases });
      phaseOf('decommission').detail = `v1 scaled to 0; deleted CRDs ${deleted.join(', ') || '(none)'}; archive ${archive}`;
    },
  };

  upsertMemo({ runId: o.runId, strategy: o.strategy });
  outer: for (const name of order) {
    if (rollbackRequested || abortRequested) break;
    const ph = phaseOf(name);
    p.phase = name;
    for (;;) {
      ph.status = 'running';
      ph.startedAt ??= new Date().toISOString();
      p.status = 'running';
      show();
      try {
        scope = new CancellationScope();
        await scope.run(phases[name]);
        scope = null;
        if (ph.status === 'running') ph.status = 'done';
        ph.endedAt = new Date().toISOString();
        break;
      } catch (err) {
        scope = null;
        if (rollbackRequested || abortRequested) {
          ph.status = 'failed';
          ph.detail = `${ph.detail ? ph.detail + '\n' : ''}interrupted by ${rollbackRequested ? 'rollback' : 'abort'}`;
          break outer;
        }
        if (isCancellation(err)) throw err;
        ph.status = 'failed';
        p.status = 'blocked';
        p.blockedReason = `${name} failed: ${innermost(err)} — retry, rollback or abort`;
        show();
        await condition(() => retryRequested || rollbackRequested || abortRequested);
        if (!retryRequested) break outer;
        retryRequested = false;
        p.blockedReason = null;
      }
    }
    if (o.dryRun && name === 'preflight') {
      for (const x of p.phases) if (x.status === 'pending') x.status = 'skipped';
      p.status = 'planned';
      show();
      return p;
    }
  }

  if (rollbackRequested) {
    p.status = 'rolling-back';
    show();
    const step = async (label: string, fn: () => Promise<string | void>) => {
      try {
        const detail = await fn();
        p.rollback.push({ step: label, status: 'done', ...(detail ? { detail } : {}) });
      } catch (err) {
        p.rollback.push({ step: label, status: 'failed', detail: innermost(err) });
      }
    };
    // Newest first: traffic back to v1, v2 down, the database back, v1's objects and replicas back.
    await step('route everyone to v1', () =>
      quick.setRouting({ mode: 'v1', v1ApiUrl: o.v1.apiUrl, users: [], percent: 0, runId: o.runId, cohort: null }).then(() => 'all users → v1'),
    );
    if (o.v2.deployments.length)
      await step('scale v2 down', async () => {
        const prev = await quick.scaleDeployments(o, Object.fromEntries(o.v2.deployments.map((d) => [d, 0])));
        return Object.entries(prev)
          .map(([d, n]) => `${d} ${n}→0`)
          .join(', ');
      });
    if (done.schemaTouched && manifest) {
      const m: BackupManifest = manifest;
      await step('export data created on v2', async () => {
        const r = await quick.exportV2Data(o);
        return `${r.sessions} v2 sessions saved to ${r.file}`;
      });
      await step('restore the database from the backup', async () => {
        const after = await heavy.restoreDatabase(o, m);
        return (
          Object.entries(after)
            .map(([t, s]) => `${t}=${s.count}`)
            .join(', ') + ' (checksums match the backup)'
        );
      });
    }
    if (done.crdsDeleted && manifest) {
      const m: BackupManifest = manifest;
      await step('restore v1 CRDs', async () => `${await quick.restoreV1Crds(o, m)} objects restored`);
    }
    if (done.v1Scaled) {
      const back = Object.fromEntries(Object.entries(done.v1Scaled).filter(([, n]) => n !== null)) as Record<string, number>;
      await step('scale v1 up', async () => {
        await quick.scaleDeployments(o, back);
        return Object.entries(back)
          .map(([d, n]) => `${d}=${n}`)
          .join(', ');
      });
    }
    for (const ph of p.phases) if (ph.status === 'done') ph.status = 'compensated';
    p.status = 'rolled-back';
    p.blockedReason = p.rollback.some((s) => s.status === 'failed') ? 'some rollback steps failed: see rollback' : null;
  } else {
    p.status = abortRequested ? 'aborted' : 'completed';
  }
  p.phase = null;
  show();
  return p;
}

function plan(o: MigrationOptions, counts: { dbSessions: number; crdSessions: number; crdTemplates: number }): string[] {
  const lines: Record<PhaseName, string> = {
    preflight: `preflight: v1 API ${o.v1.apiUrl}, database, CRDs in ${o.v1.namespaces.join(', ')}; v2 ${o.v2.readyUrl}`,
    backup: `backup: pg_dump (custom format, verified) + CRDs, Deployments, Secret into ${o.backupDir}/${o.runId} with sha256 manifest`,
    maintenance: `maintenance: scale v1 (${o.v1.deployments.join(', ')}) to 0 for the window`,
    schema: 'schema: apply migrations/ in order and run the spec verification queries',
    agents: `agents: wait (up to ${o.agentWaitTimeout}) for an online agent on ${o.v2.platforms.join(', ')}`,
    import: `import: ${counts.crdTemplates} template CRDs; ${counts.crdSessions} Session CRDs and ${counts.dbSessions} database rows, batches of ${o.importBatchSize}`,
    cutover:
      o.strategy === 'blue-green'
        ? `cutover: ${o.cohorts.map((c) => `${c.name} (${c.users?.length ? c.users.length + ' users' : ''}${c.percent ? (c.users?.length ? ' + ' : '') + c.percent + '%' : ''})`).join(' → ')} → full; approval ${o.approval.mode}${o.approval.mode === 'auto' ? ` after ${o.approval.soak} soak` : ''}`
        : 'cutover: everyone to v2 at once',
    decommission: `decommission: after ${o.decommissionAfter}, scale v1 to 0, delete v1 CRDs, archive the backup`,
  };
  return STRATEGY_PHASES[o.strategy].map((n) => lines[n]);
}

function innermost(err: unknown): string {
  let e: unknown = err;
  while (e && typeof e === 'object' && 'cause' in e && (e as { cause?: unknown }).cause) e = (e as { cause: unknown }).cause;
  return e instanceof Error ? e.message : String(e);
}

const UNIT: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
function msOf(d: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(d);
  if (!m) throw ApplicationFailure.nonRetryable(`bad duration "${d}"`);
  return Number(m[1]) * UNIT[m[2]];
}
