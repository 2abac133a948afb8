/** Worker process: runs session workflows and their activities. Stateless; run as many as you like. */
import { NativeConnection } from '@temporalio/worker';
import { Connection } from '@temporalio/client';
import os from 'node:os';
import { databaseUrl, envDuration, envOptional, taskQueue, temporalAddress, temporalNamespace } from '../config/env';
import { createLogger } from '../config/log';
import { createPool } from '../db/pool';
import { ensureSearchAttributes } from './search-attributes';
import { createSessionWorker } from './worker';
import { runMain } from '../config/process';

async function main() {
  const log = createLogger('worker');
  const address = temporalAddress();
  const namespace = temporalNamespace();
  const url = databaseUrl();
  const pool = createPool(url);
  const client = await Connection.connect({ address });
  await ensureSearchAttributes(client, namespace);
  await client.close();
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
  });
  log.info('Worker started', { address, namespace, taskQueue: taskQueue() });
  const stop = () => worker.shutdown();
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  await worker.run();
  await close();
  await pool.end();
  await connection.close();
  log.info('Worker stopped');
}

runMain(main);
