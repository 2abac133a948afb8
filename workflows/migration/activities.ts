/**
 * The migration's activities as the workflow calls them. Every proxy waits for a cancelled
 * activity to stop (WAIT_CANCELLATION_COMPLETED) before the workflow moves on, so a rollback
 * never runs next to a pg_dump or an import page that is still writing.
 */
import { ActivityCancellationType, proxyActivities } from '@temporalio/workflow';
import type { MigrationActivities } from '../../activities/migration/activities';

const cancellationType = ActivityCancellationType.WAIT_CANCELLATION_COMPLETED;

/** Short calls (routing, scaling, reads). */
export const quick = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '2m',
  cancellationType,
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 5 },
});

/** pg_dump / pg_restore / schema / undo: long, heartbeating (a dead worker is noticed within a minute). */
export const heavy = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '6h',
  heartbeatTimeout: '1m',
  cancellationType,
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1m', maximumAttempts: 3 },
});

/** One import page each. */
export const importer = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '15m',
  heartbeatTimeout: '1m',
  cancellationType,
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '30s', maximumAttempts: 10 },
});

/** Compensation steps: they must finish, so they retry longer. */
export const compensation = proxyActivities<MigrationActivities>({
  startToCloseTimeout: '6h',
  heartbeatTimeout: '1m',
  cancellationType,
  retry: { initialInterval: '2s', backoffCoefficient: 2, maximumInterval: '1m', maximumAttempts: 8 },
});

/** Waiting for agents: as long as the run allows, heartbeating. */
export const waiting = (timeout: string) =>
  proxyActivities<MigrationActivities>({ startToCloseTimeout: timeout as '1m', heartbeatTimeout: '30s', cancellationType, retry: { maximumAttempts: 1 } });
