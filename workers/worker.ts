/** Builds a Temporal worker for the session task queue with its activities' dependencies. */
import { NativeConnection, Worker } from '@temporalio/worker';
import { existsSync } from 'node:fs';
import v8 from 'node:v8';
import type { Pool } from 'pg';
import { CommandWaiter } from '../activities/command-waiter';
import { createMigrationActivities } from '../activities/migration/activities';
import type { AdoptionDeps } from '../activities/session-adoption';
import { createSessionActivities } from '../activities/session-activities';
import { createAuditActivities } from '../activities/audit';
import { createLifetimeActivities } from '../activities/session-lifetime';
import { CHANNEL_COMMAND_DONE } from '../db/commands';
import { PgListener } from '../db/listener';
import type { Logger } from '../config/log';
import { WORKFLOW_BUNDLE_PATH, WORKFLOWS_PATH } from './bundle';
import type { WorkerMetrics } from './metrics';

export interface SessionWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  pool: Pool;
  databaseUrl: string;
  heartbeatTimeoutMs: number;
  log: Logger;
  identity?: string;
  /** Redis for the migration's cut-over routing (REDIS_URL). */
  redisUrl?: string;
  /** Lets the migration's import start workflows for the sessions it imports. */
  adoption?: AdoptionDeps;
  /** The worker's Prometheus metrics (workers/metrics.ts), for the activities to count with. */
  metrics?: WorkerMetrics;
  /** How long a command's local fast path waits for the agent (COMMAND_QUICK_WAIT; see quickCommand). */
  quickWaitMs?: number;
  /** Workflows kept in the sticky cache (default: defaultMaxCachedWorkflows(), from the heap size). */
  maxCachedWorkflows?: number;
}

/** Measured cost of one cached session workflow (RSS, issue 14: about 0.3 MB), with a margin of 2. */
const CACHED_WORKFLOW_MB = 0.6;

/**
 * The sticky cache's default size: as many workflows as the heap holds at CACHED_WORKFLOW_MB each,
 * after 400 MB for everything else (about 6,200 with this machine's 4 GB default heap; 2,700 with
 * a 2 GB heap). The SDK's own default assumes about 1.7 MB per workflow (about 2,300 here): at
 * 5,000 open sessions most operations then replayed a history, and a hibernate cost the worker
 * 30 ms of CPU against 18 ms with them all cached (README "Capacity").
 */
export function defaultMaxCachedWorkflows(heapLimitBytes = v8.getHeapStatistics().heap_size_limit): number {
  return Math.max(100, Math.floor((heapLimitBytes / 2 ** 20 - 400) / CACHED_WORKFLOW_MB));
}

export async function createSessionWorker(opts: SessionWorkerOptions): Promise<{ worker: Worker; close: () => Promise<void> }> {
  const listener = new PgListener(opts.databaseUrl, [CHANNEL_COMMAND_DONE], opts.log);
  await listener.start();
  const activities = {
    ...createSessionActivities({
      pool: opts.pool,
      waiter: new CommandWaiter(listener),
      heartbeatTimeoutMs: opts.heartbeatTimeoutMs,
      quickWaitMs: opts.quickWaitMs,
      log: opts.log,
      ...(opts.metrics ? { metrics: opts.metrics } : {}),
    }),
    // recordAudit: automatic actions (idle hibernation, repairs, migration phases) into audit_log.
    ...createAuditActivities({ pool: opts.pool, log: opts.log }),
    ...createLifetimeActivities({ pool: opts.pool }),
    ...createMigrationActivities({ redisUrl: opts.redisUrl, adoption: opts.adoption }),
  };
  const worker = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    identity: opts.identity,
    activities,
    ...(existsSync(WORKFLOW_BUNDLE_PATH) ? { workflowBundle: { codePath: WORKFLOW_BUNDLE_PATH } } : { workflowsPath: WORKFLOWS_PATH }),
    maxConcurrentActivityTaskExecutions: 500,
    // The sticky cache holds this many workflows in memory; an evicted one is replayed from its
    // history on its next task. Sized in README "Capacity" (WORKER_MAX_CACHED_WORKFLOWS).
    maxCachedWorkflows: opts.maxCachedWorkflows ?? defaultMaxCachedWorkflows(),
    shutdownGraceTime: '5s',
  });
  return { worker, close: () => listener.close() };
}
