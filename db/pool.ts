/**
 * Shared PostgreSQL connection pool. Size from DB_POOL_MAX (default 20). An error on an idle
 * client (server restart, network drop) is logged instead of crashing the process: pg emits it on
 * the pool, and an 'error' event without a listener would be thrown by Node.
 */
import { Pool, PoolConfig } from 'pg';
import { databaseUrl, envInt } from '../config/env';
import { createLogger, Logger } from '../config/log';

export interface CreatePoolOptions extends Omit<PoolConfig, 'connectionString'> {
  logger?: Logger;
}

export function createPool(url?: string, opts: CreatePoolOptions = {}): Pool {
  const { logger, ...config } = opts;
  const log = logger ?? createLogger('db');
  const max = config.max ?? envInt('DB_POOL_MAX', 20);
  if (max < 1) throw new Error(`DB_POOL_MAX: must be at least 1 (got ${max})`);
  const pool = new Pool({
    connectionString: url ?? databaseUrl(),
    application_name: 'streamspace',
    ...config,
    max,
  });
  pool.on('error', (err) => {
    log.error('idle PostgreSQL client error (the pool will replace it)', { error: err.message });
  });
  return pool;
}
