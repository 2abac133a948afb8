/** Builds a Temporal worker for the session task queue with its activities' dependencies. */
import { NativeConnection, Worker } from '@temporalio/worker';
import { existsSync } from 'node:fs';
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
import { withoutWorkflowStackTraces } from './workflow-stack-traces';

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
  /** Workflows kept in the sticky cache (default: the SDK's, from the heap size; README "Capacity"). */
  maxCachedWorkflows?: number;
  /** The SDK's per-promise stack traces for the `__stack_trace` query (WORKER_STACK_TRACES; see workflow-stack-traces.ts). */
  stackTraces?: boolean;
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
  if (!opts.stackTraces) withoutWorkflowStackTraces();
  const worker = await Worker.create({
    connection: opts.connection,
    namespace: opts.namespace,
    taskQueue: opts.taskQueue,
    identity: opts.identity,
    activities,
    ...(existsSync(WORKFLOW_BUNDLE_PATH) ? { workflowBundle: { codePath: WORKFLOW_BUNDLE_PATH } } : { workflowsPath: WORKFLOWS_PATH }),
    maxConcurrentActivityTaskExecutions: 500,
    // The sticky cache holds this many workflows in memory; an evicted one is replayed from its
    // history on its next task. Sized in README "Capacity" (WORKER_MAX_CACHED_WORKFLOWS). The SDK's
    // default (about 1.7 MB of heap per workflow) is kept on purpose: a cache of 0.6 MB per
    // workflow filled half the heap and doubled the worker's CPU per hibernate at 10,000 sessions.
    ...(opts.maxCachedWorkflows !== undefined ? { maxCachedWorkflows: opts.maxCachedWorkflows } : {}),
    shutdownGraceTime: '5s',
  });
  return { worker, close: () => listener.close() };
}
