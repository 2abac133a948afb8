/**
 * Shared PostgreSQL connection pool. Size from DB_POOL_MAX (default 20). An error on a client
 * (server restart, network drop) is logged instead of crashing the process: pg emits it on the
 * pool while the client is idle, and on the client itself while it is checked out (a transaction
 * between two queries, e.g. waiting on Temporal) — where pg-pool leaves no listener, and an
 * 'error' event without one is thrown by Node. Every client therefore gets its own listener; the
 * broken client fails its next query and is discarded on release.
 */
import { Pool, PoolConfig } from 'pg';
import { databaseUrl, envBool, envInt } from '../config/env';
import { createLogger, Logger } from '../config/log';
import { prepareStatements } from './prepared';

export interface CreatePoolOptions extends Omit<PoolConfig, 'connectionString'> {
  logger?: Logger;
  /** Parameterised statements as named prepared statements (db/prepared.ts); default DB_PREPARED_STATEMENTS (true). */
  prepared?: boolean;
}

export function createPool(url?: string, opts: CreatePoolOptions = {}): Pool {
  const { logger, prepared, ...config } = opts;
  const log = logger ?? createLogger('db');
  const max = config.max ?? envInt('DB_POOL_MAX', 20);
  if (max < 1) throw new Error(`DB_POOL_MAX: must be at least 1 (got ${max})`);
  const pool = new Pool({
    connectionString: url ?? databaseUrl(),
    application_name: 'streamspace',
    ...config,
    max,
  });
  const prepare = prepared ?? envBool('DB_PREPARED_STATEMENTS', true);
  pool.on('connect', (client) => {
    if (prepare) prepareStatements(client);
    client.on('error', (err) => log.warn('PostgreSQL connection lost (the pool replaces it)', { error: err.message }));
  });
  // Idle clients' errors are re-emitted on the pool; logged once above.
  pool.on('error', () => undefined);
  return pool;
}
