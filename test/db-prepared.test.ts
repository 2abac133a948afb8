/**
 * The pools every process uses (db/pool.ts) run parameterised statements as named prepared
 * statements (db/prepared.ts, issue 14): PostgreSQL parses each text once per connection, not on
 * every call. Checked on the server's own view of the connection (pg_prepared_statements).
 *
 * Checked red: without prepareStatements in createPool, no statement is prepared; without the
 * fallback, a SELECT * whose table gained a column fails with "cached plan must not change
 * result type" instead of answering.
 */
import type { Pool, PoolClient } from 'pg';
import { createPool } from '../db/pool';
import { dbUrl } from './harness/env';
import { asPgAdmin } from './harness/pg-admin';

const DB = `prepared_${process.pid}`;

interface Prepared {
  statement: string;
  calls: number;
}

describe('prepared statements', () => {
  beforeAll(async () => {
    await asPgAdmin((c) => c.query(`CREATE DATABASE ${DB}`));
  });
  afterAll(async () => {
    await asPgAdmin((c) => c.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`));
  });

  /**
   * One of the pool's connections, checked out: pg_prepared_statements (per connection) shows
   * what its statements did. (A failed pool.query discards its connection.)
   */
  async function withClient(opts: { prepared?: boolean }, fn: (client: PoolClient) => Promise<void>) {
    const pool = createPool(dbUrl(DB), { max: 1, ...opts });
    const client = await pool.connect();
    try {
      await fn(client);
    } finally {
      client.release();
      await pool.end();
    }
  }
  /** The pool itself (pool.query, as the product's code calls it): one connection, never checked out here. */
  async function withPool(fn: (pool: Pool) => Promise<void>) {
    const pool = createPool(dbUrl(DB), { max: 1 });
    try {
      await fn(pool);
    } finally {
      await pool.end();
    }
  }
  const prepared = async (client: PoolClient) =>
    (
      await client.query<Prepared>(
        'SELECT statement, (generic_plans + custom_plans)::int AS calls FROM pg_prepared_statements WHERE NOT from_sql ORDER BY statement',
      )
    ).rows;

  test('a parameterised statement is prepared once per connection and run from there', async () => {
    await withClient({}, async (client) => {
      await client.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
      for (let i = 0; i < 5; i++) await client.query('INSERT INTO t (id, v) VALUES ($1, $2)', [i, `v${i}`]);
      // A config object and a failing call (a duplicate key) take the same statement.
      await client.query({ text: 'INSERT INTO t (id, v) VALUES ($1, $2)', values: [5, 'v5'] });
      await expect(client.query('INSERT INTO t (id, v) VALUES ($1, $2)', [0, 'again'])).rejects.toThrow(/duplicate key/);
      const r = await client.query<{ v: string }>('SELECT v FROM t WHERE id = $1', [3]);
      expect(r.rows).toEqual([{ v: 'v3' }]);
      expect(await prepared(client)).toEqual([
        { statement: 'INSERT INTO t (id, v) VALUES ($1, $2)', calls: 7 },
        { statement: 'SELECT v FROM t WHERE id = $1', calls: 1 },
      ]);
    });
  });

  test('a SELECT * whose table changed under it still answers', async () => {
    await withPool(async (pool) => {
      await pool.query('CREATE TABLE u (id int PRIMARY KEY)');
      await pool.query('INSERT INTO u (id) VALUES ($1)', [1]);
      expect((await pool.query('SELECT * FROM u WHERE id = $1', [1])).rows).toEqual([{ id: 1 }]);
      await pool.query('ALTER TABLE u ADD COLUMN note text');
      expect((await pool.query('SELECT * FROM u WHERE id = $1', [1])).rows).toEqual([{ id: 1, note: null }]);
      expect((await pool.query('SELECT * FROM u WHERE id = $1', [1])).rows).toEqual([{ id: 1, note: null }]);
    });
  });

  test('DB_PREPARED_STATEMENTS=false (prepared: false) runs every statement unnamed', async () => {
    await withClient({ prepared: false }, async (client) => {
      await client.query('SELECT $1::int AS n', [1]);
      expect(await prepared(client)).toEqual([]);
    });
  });
});
