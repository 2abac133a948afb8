/**
 * Audit entries for automatic actions (no HTTP request behind them), written to v1's audit_log
 * with user_id 'system'. Registered with the worker; call it from a workflow as a (local) activity:
 *
 *   const audit = proxyLocalActivities<AuditActivities>({ startToCloseTimeout: '10s', retry: { maximumAttempts: 3 } });
 *   await audit.recordAudit({ action: 'session.idle_hibernate', resource_type: 'session', resource_id: sessionId,
 *                             metadata: { idle_for: '30m' } });
 *
 * It never fails the caller: a write that fails is logged and dropped (the action itself happened).
 * Action names in use (docs/OPERATIONS.md): session.idle_hibernate, session.max_duration_stop,
 * session.reconcile_repair, session.failed, migration.phase_started, migration.phase_finished,
 * migration.phase_failed.
 */
import type { Logger } from '../config/log';
import { changes, insertAudit, SYSTEM_ACTOR } from '../db/audit';
import type { Queryable } from '../db/quota';

export interface RecordAuditInput {
  /** Dotted name of what happened, e.g. session.idle_hibernate. */
  action: string;
  /** The kind of resource: session, migration, agent, user. */
  resource_type: string;
  resource_id: string;
  /** Defaults to 'system'. */
  actor?: string;
  /** Anything that explains the action (never a secret). */
  metadata?: Record<string, unknown>;
  /** What went wrong, for a failed action. */
  error?: string;
}

export type AuditActivities = ReturnType<typeof createAuditActivities>;

export function createAuditActivities(deps: { pool: Queryable; log?: Pick<Logger, 'warn'> }) {
  return {
    async recordAudit(input: RecordAuditInput): Promise<void> {
      await writeSystemAudit(deps, input);
    },
  };
}

/** Writes one automatic action's entry; logs (never throws) when the write fails. */
export async function writeSystemAudit(deps: { pool: Queryable; log?: Pick<Logger, 'warn'> }, input: RecordAuditInput): Promise<void> {
  try {
    await insertAudit(deps.pool, [
      {
        user_id: input.actor ?? SYSTEM_ACTOR,
        action: input.action,
        resource_type: input.resource_type,
        resource_id: input.resource_id,
        changes: changes({ error: input.error ?? '', metadata: input.metadata ?? null }),
        ip_address: null,
      },
    ]);
  } catch (err) {
    deps.log?.warn('audit entry not written', { action: input.action, resource: `${input.resource_type}/${input.resource_id}`, error: (err as Error).message });
  }
}
