/**
 * The state of one migration run inside the workflow: its progress (the query), the operator's
 * requests (signals and the rollback update), what has been done that a rollback must undo, and
 * the loop that runs phases with block / retry / rollback / abort.
 */
import {
  ApplicationFailure,
  CancellationScope,
  condition,
  isCancellation,
  patched,
  proxyLocalActivities,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { AuditActivities } from '../../activities/audit';
import type { Duration } from '@temporalio/common';
import type { BackupManifest } from '../../activities/migration/activities';
import {
  abortSignal,
  approveSignal,
  cancelDecommissionSignal,
  importProgressSignal,
  MigrationOptions,
  MigrationProgress,
  PhaseName,
  progressQuery,
  redactSecrets,
  retrySignal,
  rollbackUpdate,
  RollbackOptions,
  STRATEGY_PHASES,
} from '../migration-api';
import { SA } from '../search-attributes';
import { quick } from './activities';

const MAX_FAILURES = 1000;

/** After a routing change: the gateways' routing cache (1 s) expires and in-flight requests end. */
export const ROUTING_SETTLE = '3s';

// Phase changes go to v1's audit_log (user 'system'); a failed write never holds up a phase.
const audit = proxyLocalActivities<AuditActivities>({ startToCloseTimeout: '10s', retry: { maximumAttempts: 3 } });

export class Run {
  readonly order: PhaseName[];
  readonly p: MigrationProgress;
  private approvals = new Set<string>();
  private retryRequested = false;
  rollbackRequested = false;
  rollbackOptions: RollbackOptions = {};
  abortRequested = false;
  keepV1 = false;
  private scope: CancellationScope | null = null;
  manifest: BackupManifest | null = null;
  /** What a rollback must undo. */
  readonly done = { schemaTouched: false, v1Scaled: [] as string[], crdsDeleted: false, routed: false };
  /** Sum of the cut-over's delta imports. */
  readonly deltaTotals = { processed: 0, reimported: 0, adopted: 0 };

  constructor(readonly o: MigrationOptions) {
    this.order = STRATEGY_PHASES[o.strategy];
    this.p = {
      runId: o.runId,
      strategy: o.strategy,
      status: 'running',
      phase: null,
      phases: this.order.map((name) => ({ name, status: 'pending' })),
      import: { total: 0, processed: 0, imported: 0, failed: 0, failures: [] },
      cohort: null,
      awaitingApproval: null,
      blockedReason: null,
      decommissionAt: null,
      rollback: [],
      plan: [],
    };
    const p = this.p;
    setHandler(progressQuery, () => p);
    setHandler(approveSignal, (what?: string) => void this.approvals.add(what ?? p.awaitingApproval ?? '*'));
    setHandler(retrySignal, () => void (this.retryRequested = true));
    setHandler(cancelDecommissionSignal, () => void (this.keepV1 = true));
    setHandler(abortSignal, () => {
      this.abortRequested = true;
      this.scope?.cancel();
    });
    setHandler(importProgressSignal, (t) => {
      if (!t.delta) {
        p.import.processed = t.processed;
        p.import.imported = t.imported;
        p.import.failed = t.failed;
      }
      this.addFailures(t.failures);
    });
    setHandler(
      rollbackUpdate,
      (reason: string, options?: RollbackOptions) => {
        if (!this.rollbackRequested) {
          this.rollbackRequested = true;
          this.rollbackOptions = options ?? {};
          p.blockedReason = reason ? `rollback requested: ${reason}` : 'rollback requested';
          this.scope?.cancel();
        }
        return p;
      },
      {
        validator: (_reason: string, _options?: RollbackOptions) => {
          if (p.status === 'rolled-back' || p.status === 'aborted' || p.status === 'completed' || p.status === 'planned')
            throw ApplicationFailure.nonRetryable(`the run is ${p.status}: nothing to roll back`);
        },
      },
    );
    upsertMemo({ runId: o.runId, strategy: o.strategy });
  }

  addFailures(f: MigrationProgress['import']['failures']): void {
    this.p.import.failures.push(...f.slice(0, Math.max(0, MAX_FAILURES - this.p.import.failures.length)));
  }

  phaseOf(name: PhaseName) {
    return this.p.phases.find((x) => x.name === name)!;
  }

  show(): void {
    const p = this.p;
    upsertSearchAttributes([{ key: SA.migrationPhase, value: p.phase ? `${p.phase}:${p.status}` : p.status }]);
    upsertMemo({ phase: p.phase, status: p.status, cohort: p.cohort, blocked: p.blockedReason });
  }

  private approved(name: string) {
    return this.approvals.has(name) || this.approvals.has('*');
  }

  /** Waits for the operator's approval (or, in auto mode, a soak and passing health gates). */
  async waitApproval(name: string): Promise<void> {
    const p = this.p;
    p.awaitingApproval = name;
    p.status = 'awaiting-approval';
    this.show();
    if (this.o.approval.mode === 'auto') {
      for (;;) {
        if (await condition(() => this.approved(name), this.o.approval.soak as Duration)) break;
        const gates = await quick.checkHealthGates(this.o);
        if (gates.ok) break;
        p.blockedReason = `health gates failed for ${name}: ${gates.reasons.join('; ')} (approve to override)`;
        this.show();
      }
    } else {
      await condition(() => this.approved(name));
    }
    this.approvals.delete('*');
    p.awaitingApproval = null;
    p.blockedReason = null;
    p.status = 'running';
    this.show();
  }

  /**
   * Runs the phases in the strategy's order. A failed phase blocks (with its reason) until the
   * operator retries, rolls back or aborts; a rollback or abort cancels the running phase and
   * waits for its activities and child workflows to stop. Returns false after a dry run's preflight.
   */
  async runPhases(bodies: Record<PhaseName, () => Promise<void>>): Promise<'finished' | 'planned'> {
    const p = this.p;
    outer: for (const name of this.order) {
      if (this.rollbackRequested || this.abortRequested) break;
      const ph = this.phaseOf(name);
      p.phase = name;
      for (;;) {
        await this.auditPhase('migration.phase_started', name);
        ph.status = 'running';
        ph.startedAt ??= new Date().toISOString();
        p.status = 'running';
        this.show();
        try {
          this.scope = new CancellationScope();
          await this.scope.run(bodies[name]);
          this.scope = null;
          if (ph.status === 'running') ph.status = 'done';
          ph.endedAt = new Date().toISOString();
          await this.auditPhase('migration.phase_finished', name, { status: ph.status });
          break;
        } catch (err) {
          this.scope = null;
          if (this.rollbackRequested || this.abortRequested) {
            ph.status = 'failed';
            ph.detail = `${ph.detail ? ph.detail + '\n' : ''}interrupted by ${this.rollbackRequested ? 'rollback' : 'abort'}`;
            break outer;
          }
          if (isCancellation(err)) throw err;
          ph.status = 'failed';
          p.status = 'blocked';
          p.blockedReason = `${name} failed: ${innermost(err)} — retry, rollback or abort`;
          this.show();
          await this.auditPhase('migration.phase_failed', name, { error: p.blockedReason });
          await condition(() => this.retryRequested || this.rollbackRequested || this.abortRequested);
          if (!this.retryRequested) break outer;
          this.retryRequested = false;
          p.blockedReason = null;
        }
      }
      if (this.o.dryRun && name === 'preflight') {
        for (const x of p.phases) if (x.status === 'pending') x.status = 'skipped';
        p.status = 'planned';
        p.phase = null;
        this.show();
        return 'planned';
      }
    }
    return 'finished';
  }

  /** Records a phase change in the audit log (runs recorded before this existed replay without it). */
  private async auditPhase(action: string, phase: PhaseName, extra: { status?: string; error?: string } = {}): Promise<void> {
    if (!patched('audit-migration-phases')) return;
    await audit
      .recordAudit({
        action,
        resource_type: 'migration',
        resource_id: this.o.runId,
        metadata: { phase, strategy: this.o.strategy, dry_run: this.o.dryRun ?? false, ...(extra.status ? { status: extra.status } : {}) },
        ...(extra.error ? { error: extra.error } : {}),
      })
      .catch(() => undefined);
  }

  /** One compensation step: recorded done, failed (with the reason) or skipped; never throws. */
  async step(label: string, fn: () => Promise<string | void>): Promise<boolean> {
    try {
      const detail = await fn();
      this.p.rollback.push({ step: label, status: 'done', ...(detail ? { detail } : {}) });
      return true;
    } catch (err) {
      this.p.rollback.push({ step: label, status: 'failed', detail: innermost(err) });
      return false;
    }
  }

  skip(label: string, why: string): void {
    this.p.rollback.push({ step: label, status: 'skipped', detail: why });
  }
}

export function innermost(err: unknown): string {
  let e: unknown = err;
  while (e && typeof e === 'object' && 'cause' in e && (e as { cause?: unknown }).cause) e = (e as { cause: unknown }).cause;
  // Activities redact what they throw; this is the second line of defence before progress, memo and history.
  return redactSecrets(e instanceof Error ? e.message : String(e));
}

const UNIT: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
export function msOf(d: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(d);
  if (!m) throw ApplicationFailure.nonRetryable(`bad duration "${d.slice(0, 20)}"`);
  return Number(m[1]) * UNIT[m[2]];
}

/**
 * The workflow's own guard (a run started around the API, e.g. with the Temporal CLI): the shapes
 * that would escape backupDir, loop forever or carry a secret fail the run at once, unexplored.
 */
export function checkOptions(o: MigrationOptions): void {
  const bad = (why: string) => {
    throw ApplicationFailure.nonRetryable(`invalid migration options: ${why}`, 'InvalidOptions');
  };
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(o.runId)) bad('runId must match ^[a-z0-9][a-z0-9-]{0,62}$');
  if (!Number.isInteger(o.importBatchSize) || o.importBatchSize < 1) bad('importBatchSize must be an integer ≥ 1');
  if (!o.v1?.database || 'databaseUrl' in (o.v1 as object) || (o.v2 && 'databaseUrl' in (o.v2 as object)))
    bad('databases are given as v1.database / v2.database refs (never a URL with a password)');
  for (const db of [o.v1.database, o.v2.database]) {
    if (db?.url && /^[a-z]+:\/\/[^/@]*:[^/@]*@/i.test(db.url)) bad('a database URL must not carry a password');
  }
  for (const d of [o.approval.soak, o.agentWaitTimeout, o.decommissionAfter]) msOf(d);
}
