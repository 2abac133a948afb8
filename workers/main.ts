/** Worker process: runs session workflows and their activities. Stateless; run as many as you like. */
import { NativeConnection, Runtime } from '@temporalio/worker';
import type { Logger as TemporalLogger, LogLevel as TemporalLogLevel, LogMetadata } from '@temporalio/common';
import { Client, Connection } from '@temporalio/client';
import os from 'node:os';
import { databaseUrl, devMode, envBool, envDuration, envInt, envOptional, requireSecrets, taskQueue, temporalNamespace, WORKER_SECRETS } from '../config/env';
import { temporalConnectionOptions } from '../config/temporal';
import { createLogger, type Logger } from '../config/log';
import { createPool } from '../db/pool';
import { ensureSearchAttributes } from './search-attributes';
import { createSessionWorker } from './worker';
import { createWorkerMetrics, freePort, startWorkerMetricsServer, type WorkerMetricsServer } from './metrics';
import { runMain } from '../config/process';

async function main() {
  // Outside STREAMSPACE_DEV_MODE: one line naming the missing secret, exit 78.
  requireSecrets('worker', WORKER_SECRETS);
  const log = createLogger('worker');
  // Before any NativeConnection or Worker exists: the Temporal Core SDK exports its own metrics on an
  // internal address, which the worker's /metrics endpoint fetches and appends to ours.
  // WORKER_SDK_METRICS_PORT: that internal port (unset or 0: a free one).
  const sdkPort = envInt('WORKER_SDK_METRICS_PORT', 0) || (await freePort());
  const sdkMetricsUrl = `http://127.0.0.1:${sdkPort}/metrics`;
  Runtime.install({
    logger: temporalLogger(createLogger('temporal')),
    telemetryOptions: { metrics: { prometheus: { bindAddress: `127.0.0.1:${sdkPort}` } } },
  });
  const metrics = createWorkerMetrics();
  const metricsServer = await startMetricsServer(log, metrics, sdkMetricsUrl);
  // TEMPORAL_ADDRESS with TLS / mTLS / API key (TEMPORAL_TLS_*, TEMPORAL_API_KEY; config/temporal.ts).
  const temporalOptions = temporalConnectionOptions();
  const address = temporalOptions.address;
  const namespace = temporalNamespace();
  const url = databaseUrl();
  const pool = createPool(url);
  const clientConnection = await Connection.connect(temporalOptions);
  await ensureSearchAttributes(clientConnection, namespace);
  const temporal = new Client({ connection: clientConnection, namespace });
  const connection = await NativeConnection.connect(temporalOptions);
  // The sticky cache (README "Capacity"): WORKER_MAX_CACHED_WORKFLOWS, else the SDK's default from the heap.
  // WORKER_STACK_TRACES: the SDK's per-promise stack traces (the Temporal UI's "Stack Trace" tab); off: workers/workflow-stack-traces.ts.
  const stackTraces = envBool('WORKER_STACK_TRACES', false);
  const maxCachedWorkflows = envOptional('WORKER_MAX_CACHED_WORKFLOWS') !== undefined ? envInt('WORKER_MAX_CACHED_WORKFLOWS', 0) : undefined;
  const { worker, close } = await createSessionWorker({
    connection,
    namespace,
    taskQueue: taskQueue(),
    pool,
    databaseUrl: url,
    heartbeatTimeoutMs: envDuration('AGENT_HEARTBEAT_TIMEOUT', '30s'),
    quickWaitMs: envDuration('COMMAND_QUICK_WAIT', '500ms'),
    log,
    metrics,
    identity: `worker-${os.hostname()}-${process.pid}`,
    redisUrl: envOptional('REDIS_URL'),
    maxCachedWorkflows,
    stackTraces,
    adoption: {
      pool,
      temporal,
      taskQueue: taskQueue(),
      startTimeoutMs: envDuration('SESSION_START_TIMEOUT', '5m'),
      historyLimit: envInt('SESSION_HISTORY_LIMIT', 2000),
      stateSearchAttribute: envBool('SESSION_STATE_SEARCH_ATTRIBUTE', false),
    },
  });
  log.info('Worker started', { address, namespace, taskQueue: taskQueue(), metrics: metricsServer.url, maxCachedWorkflows: worker.options.maxCachedWorkflows, stackTraces });
  const stop = () => worker.shutdown();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await worker.run();
  await close();
  await pool.end();
  await connection.close();
  await clientConnection.close();
  await metricsServer.close();
  log.info('Worker stopped');
}

/**
 * WORKER_METRICS_HOST (0.0.0.0; 127.0.0.1 in dev mode) : WORKER_METRICS_PORT (9464; 0 picks a free port). When the port is
 * the default and already taken (several workers on one host), a free one is used instead, with a warning;
 * a port set explicitly must be free.
 */
async function startMetricsServer(log: Logger, metrics: ReturnType<typeof createWorkerMetrics>, sdkMetricsUrl: string): Promise<WorkerMetricsServer> {
  // Scraped from outside the container: all interfaces, except on a developer machine.
  const host = envOptional('WORKER_METRICS_HOST') ?? (devMode() ? '127.0.0.1' : '0.0.0.0');
  const explicit = envOptional('WORKER_METRICS_PORT') !== undefined;
  const port = envInt('WORKER_METRICS_PORT', 9464);
  let server: WorkerMetricsServer;
  try {
    server = await startWorkerMetricsServer({ port, host, metrics, sdkMetricsUrl });
  } catch (err) {
    if (explicit || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    log.warn(`metrics port ${port} is in use; serving metrics on a free port instead`, { host });
    server = await startWorkerMetricsServer({ port: 0, host, metrics, sdkMetricsUrl });
  }
  log.info(`Worker metrics at ${server.url}`, { temporal_sdk: sdkMetricsUrl });
  return server;
}

/** The Temporal SDK's log lines (worker state, workflow and activity loggers) through our logger. */
function temporalLogger(log: Logger): TemporalLogger {
  const write = (level: TemporalLogLevel, message: string, meta?: LogMetadata) => {
    const fields = meta as Record<string, unknown> | undefined;
    if (level === 'ERROR') log.error(message, fields);
    else if (level === 'WARN') log.warn(message, fields);
    else if (level === 'INFO') log.info(message, fields);
    else log.debug(message, fields);
  };
  return {
    log: write,
    trace: (m, meta) => write('TRACE', m, meta),
    debug: (m, meta) => write('DEBUG', m, meta),
    info: (m, meta) => write('INFO', m, meta),
    warn: (m, meta) => write('WARN', m, meta),
    error: (m, meta) => write('ERROR', m, meta),
  };
}

runMain(main);
