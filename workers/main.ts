/** Worker process: runs session workflows and their activities. Stateless; run as many as you like. */
import { NativeConnection } from '@temporalio/worker';
import { Client, Connection } from '@temporalio/client';
import os from 'node:os';
import { databaseUrl, envDuration, envInt, envOptional, requireSecrets, taskQueue, temporalAddress, temporalNamespace, WORKER_SECRETS } from '../config/env';
import { createLogger } from '../config/log';
import { createPool } from '../db/pool';
import { ensureSearchAttributes } from './search-attributes';
import { createSessionWorker } from './worker';
import { runMain } from '../config/process';

async function main() {
  // Outside STREAMSPACE_DEV_MODE: one line naming the missing secret, exit 78.
  requireSecrets('worker', WORKER_SECRETS);
  const log = createLogger('worker');
  const address = temporalAddress();
  const namespace = temporalNamespace();
  const url = databaseUrl();
  const pool = createPool(url);
  const clientConnection = await Connection.connect({ address });
  await ensureSearchAttributes(clientConnection, namespace);
  const temporal = new Client({ connection: clientConnection, namespace });
  const connection = await NativeConnection.connect({ address });
  const { worker, close } = await createSessionWorker({
    connection,
    namespace,
    taskQueue: taskQueue(),
    pool,
    databaseUrl: url,
    heartbeatTimeoutMs: envDuration('AGENT_HEARTBEAT_TIMEOUT', '30s'),
    log,
    identity: `worker-${os.hostname()}-${process.pid}`,
    redisUrl: envOptional('REDIS_URL'),
    adoption: {
      pool,
      temporal,
      taskQueue: taskQueue(),
      startTimeoutMs: envDuration('SESSION_START_TIMEOUT', '5m'),
      historyLimit: envInt('SESSION_HISTORY_LIMIT', 2000),
    },
  });
  log.info('Worker started', { address, namespace, taskQueue: taskQueue() });
  const stop = () => worker.shutdown();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await worker.run();
  await close();
  await pool.end();
  await connection.close();
  await clientConnection.close();
  log.info('Worker stopped');
}

runMain(main);
