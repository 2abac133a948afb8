/**
 * The reads behind GET /sessions and GET /sessions/:id name each session's owner by joining
 * users on users.id::text (sessions.user_id is text, as in v1; users.id a uuid). Without an index
 * on that expression, PostgreSQL reads the whole users table per session of a page: 297 ms for a
 * page of 100 with 10,000 users (issue 14; migration 013 adds the index).
 *
 * Checked on the plans PostgreSQL makes for the exact statements the API sends
 * (listSessionsQueries, SELECT_SESSION, and the sign-in check's USERS_BY_NAME), on a database
 * migrated as the product migrates it, with 10,000 users: no plan reads the users table in full.
 *
 * Checked red: without migration 013, the list's and the single read's plans read users in a Seq
 * Scan; with the sign-in statement written so it cannot use the username index, its plan does.
 */
import { Client } from 'pg';
import { migrate } from '../db/migrate';
import { listSessionsQueries, SELECT_SESSION } from '../api/sessions/view';
import { USERS_BY_NAME } from '../api/auth/user-lookup';
import { dbUrl } from './harness/env';
import { asPgAdmin } from './harness/pg-admin';

const DB = `plans_${process.pid}`;

interface PlanNode {
  'Node Type': string;
  'Relation Name'?: string;
  Plans?: PlanNode[];
}

function nodes(n: PlanNode): PlanNode[] {
  return [n, ...(n.Plans ?? []).flatMap(nodes)];
}

describe('session reads with many users', () => {
  const db = new Client({ connectionString: dbUrl(DB) });
  let owner: string;
  let someSession: string;

  beforeAll(async () => {
    await asPgAdmin((c) => c.query(`CREATE DATABASE ${DB}`));
    await migrate(dbUrl(DB), { log: () => undefined });
    await db.connect();
    await db.query(`INSERT INTO users (username, role) SELECT 'user-' || g, 'user' FROM generate_series(1, 10000) g`);
    // 3 sessions each for 100 of them.
    await db.query(
      `INSERT INTO sessions (id, user_id, template_name, state, platform, created_at)
       SELECT 'plan-' || u.username || '-' || k, u.id::text, 'terminal', 'running', 'docker', NOW() - (k || ' minutes')::interval
         FROM (SELECT id, username FROM users ORDER BY username LIMIT 100) u, generate_series(1, 3) k`,
    );
    await db.query('ANALYZE users');
    await db.query('ANALYZE sessions');
    owner = (await db.query<{ user_id: string }>(`SELECT user_id FROM sessions LIMIT 1`)).rows[0].user_id;
    someSession = (await db.query<{ id: string }>(`SELECT id FROM sessions LIMIT 1`)).rows[0].id;
  }, 120_000);
  afterAll(async () => {
    await db.end();
    await asPgAdmin((c) => c.query(`DROP DATABASE IF EXISTS ${DB} WITH (FORCE)`));
  });

  async function usersScans(text: string, values: unknown[]): Promise<string[]> {
    const r = await db.query<{ 'QUERY PLAN': Array<{ Plan: PlanNode }> }>(`EXPLAIN (FORMAT JSON) ${text}`, values);
    return nodes(r.rows[0]['QUERY PLAN'][0].Plan)
      .filter((n) => n['Relation Name'] === 'users')
      .map((n) => n['Node Type']);
  }

  test('an admin’s first page reads the users table by index', async () => {
    const q = listSessionsQueries({ limit: 100 });
    const scans = await usersScans(q.page.text, q.page.values);
    expect(scans.length).toBeGreaterThan(0);
    expect(scans).not.toContain('Seq Scan');
  });

  test('a user’s own page reads the users table by index', async () => {
    const q = listSessionsQueries({ limit: 100, ownerId: owner });
    const scans = await usersScans(q.page.text, q.page.values);
    expect(scans.length).toBeGreaterThan(0);
    expect(scans).not.toContain('Seq Scan');
  });

  test('the sign-in check of a batch of requests reads its users by index', async () => {
    const scans = await usersScans(USERS_BY_NAME, [['user-17', 'user-4242', 'nobody']]);
    expect(scans.length).toBeGreaterThan(0);
    expect(scans).not.toContain('Seq Scan');
  });

  test('one session reads its owner by index', async () => {
    const scans = await usersScans(`${SELECT_SESSION} WHERE s.id = $1`, [someSession]);
    expect(scans.length).toBeGreaterThan(0);
    expect(scans).not.toContain('Seq Scan');
  });
});
