/**
 * The session workflow's quota check at wake (a wake may come from the API, a bulk action or the
 * console: the workflow is the one place they all pass). Under the owner's lock it counts what the
 * user runs plus other wakes in flight, and reserves this session's share until the wake ends:
 * the reservation is released when the session's state is next recorded (running, or the failed
 * wake's hibernated-with-error), when its wake/start command fails or is withdrawn, and expires
 * by itself after RESERVATION_TTL_MS should a worker die in between. An owner without a quota has
 * nothing to count: the reservation is then one statement, without the lock.
 */
import { ApplicationFailure } from '@temporalio/activity';
import type { Pool } from 'pg';
import { checkUserQuota, inTransaction, LimitError, lockUserQuota, reserve, reserveUnlessLimited, sessionResources } from '../db/quota';
import { FailureType } from '../workflows/session-api';

export interface ReserveForWakeInput {
  sessionId: string;
}

export type QuotaActivities = ReturnType<typeof createQuotaActivities>;

export function createQuotaActivities(deps: { pool: Pool }) {
  return {
    /** Fails (non-retryable, FailureType.QuotaExceeded) when waking would exceed the owner's user_quotas. */
    async reserveForWake({ sessionId }: ReserveForWakeInput): Promise<{ reserved: boolean }> {
      // Most owners have no quota: one statement (db/quota.ts reserveUnlessLimited).
      const quick = await reserveUnlessLimited(deps.pool, sessionId);
      if (quick !== 'limited') return { reserved: quick === 'reserved' };
      try {
        return await inTransaction(deps.pool, async (tx) => {
          const s = await tx.query<{ user_id: string; cpu: string | null; memory: string | null; manifest: unknown }>(
            `SELECT s.user_id, s.cpu, s.memory, t.manifest FROM sessions s LEFT JOIN template_catalog t ON t.name = s.template_name WHERE s.id = $1`,
            [sessionId],
          );
          const row = s.rows[0];
          if (!row) return { reserved: false };
          const { limits } = await lockUserQuota(tx, row.user_id);
          await checkUserQuota(tx, row.user_id, limits, sessionResources(row), sessionId);
          await reserve(tx, sessionId, row.user_id);
          return { reserved: true };
        });
      } catch (err) {
        if (err instanceof LimitError) throw ApplicationFailure.create({ message: err.message, type: FailureType.QuotaExceeded, nonRetryable: true });
        throw err;
      }
    },
  };
}
