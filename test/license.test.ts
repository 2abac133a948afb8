/**
 * Issue 13 (6): licence tiers as v1 had them (v1's `licenses`: the active row, newest
 * activated_at). No table or no active row: nothing is limited. The COMMUNITY-DEFAULT row a v1.0.0
 * install seeds (10 users, 20 sessions): the 11th user and the 21st session are refused with a 403
 * naming the limit, atomically under concurrency. An expired active licence refuses new users and
 * sessions (v1's LicenseEnforcement: 403 "License expired").
 */
import { TEST_ENV } from './harness/env';
import { Stack } from './harness/stack';
import { createV1_0_0Database } from './harness/v1-install';

jest.setTimeout(300_000);

const createSession = (stack: Stack, admin: string, user = 'admin') =>
  stack.call('POST', '/api/v1/sessions', { user, template: 'terminal', platform: 'docker' }, admin);
let n = 0;
const createUser = (stack: Stack, admin: string) => stack.call('POST', '/api/v1/users', { username: `lic-user-${++n}`, password: 'lic-user-password' }, admin);

describe('no licenses table (a fresh v2 install)', () => {
  const stack = new Stack('license-none');
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent('fake-lic-0', { MAX_SESSIONS: '100' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('nothing is limited', async () => {
    const lic = await stack.call('GET', '/api/v1/license', undefined, admin);
    expect(lic.status).toBe(200);
    expect(lic.body).toMatchObject({ licensed: false, tier: null, limits: { max_users: null, max_sessions: null }, expired: false });
    const users = await Promise.all(Array.from({ length: 12 }, () => createUser(stack, admin)));
    expect(users.every((r) => r.status === 201)).toBe(true);
    const sessions = await Promise.all(Array.from({ length: 22 }, () => createSession(stack, admin)));
    expect(sessions.every((r) => r.status === 201)).toBe(true);
  });
});

describe("a v1.0.0 install's community licence", () => {
  const stack = new Stack('license-v1');
  let admin: string;
  const count = async (sql: string) => Number((await stack.pool.query(sql)).rows[0].n);
  const licensedSessions = () => count(`SELECT count(*)::int AS n FROM sessions WHERE state IN ('pending', 'running', 'hibernated')`);
  const activeUsers = () => count(`SELECT count(*)::int AS n FROM users WHERE COALESCE(active, true)`);

  beforeAll(async () => {
    const v1 = await createV1_0_0Database(TEST_ENV.pgAdminUrl, { name: stack.dbName, users: 3, sessionsPerUser: 2, seed: 13 });
    await stack.start({ existingDatabase: true });
    await stack.startFakeAgent('fake-lic-1', { MAX_SESSIONS: '100' });
    const v1Admin = v1.users.find((u) => u.username === 'admin')!;
    admin = await stack.login(v1Admin.username, v1Admin.password);
  });
  afterAll(() => stack.stop());

  test('GET /api/v1/license shows tier, limits, usage and expiry; non-admins get 403', async () => {
    const lic = await stack.call('GET', '/api/v1/license', undefined, admin);
    expect(lic.status).toBe(200);
    expect(lic.body).toMatchObject({
      licensed: true,
      tier: 'community',
      status: 'active',
      license_key: expect.stringMatching(/^\*+AULT$/),
      expired: false,
      limits: { max_users: 10, max_sessions: 20, max_nodes: 3 },
      usage: { users: await activeUsers(), sessions: await licensedSessions(), nodes: 1 },
    });
    expect(lic.body.days_until_expiry).toBeGreaterThan(365 * 99);
    const u = await createUser(stack, admin);
    const token = await stack.login(u.body.username, 'lic-user-password');
    expect((await stack.call('GET', '/api/v1/license', undefined, token)).status).toBe(403);
  });

  test('the 11th user is refused, also under concurrency', async () => {
    const room = 10 - (await activeUsers());
    expect(room).toBeGreaterThan(0);
    const results = await Promise.all(Array.from({ length: room + 4 }, () => createUser(stack, admin)));
    expect(results.filter((r) => r.status === 201)).toHaveLength(room);
    const refused = results.filter((r) => r.status !== 201);
    expect(refused).toHaveLength(4);
    for (const r of refused) {
      expect(r.status).toBe(403);
      expect(r.body.message).toMatch(/^license limit: 10 users \(community tier\); 10 in use/);
    }
    expect(await activeUsers()).toBe(10);
    // A session for a user who never signed in creates the user: refused the same way.
    const forNew = await stack.call('POST', '/api/v1/sessions', { user: 'brand-new', template: 'terminal', platform: 'docker' }, admin);
    expect(forNew.status).toBe(403);
    expect(forNew.body.message).toMatch(/^license limit: 10 users \(community tier\)/);
  });

  test('the 21st session is refused, also under concurrency; a stop makes room', async () => {
    const room = 20 - (await licensedSessions());
    expect(room).toBeGreaterThan(0);
    const results = await Promise.all(Array.from({ length: room + 5 }, () => createSession(stack, admin)));
    const ok = results.filter((r) => r.status === 201);
    expect(ok).toHaveLength(room);
    const refused = results.filter((r) => r.status !== 201);
    expect(refused).toHaveLength(5);
    for (const r of refused) {
      expect(r.status).toBe(403);
      expect(r.body.message).toMatch(/^license limit: 20 sessions \(community tier\); 20 in use/);
    }
    expect(await licensedSessions()).toBe(20);
    await stack.waitForState(admin, ok[0].body.id, 'running');
    expect((await stack.call('DELETE', `/api/v1/sessions/${ok[0].body.id}`, undefined, admin)).body.state).toBe('terminated');
    expect((await createSession(stack, admin)).status).toBe(201);
    expect((await createSession(stack, admin)).status).toBe(403);
  });

  test('expired: new users and sessions refused (as v1); inactive: nothing limited; NULL limits: unlimited', async () => {
    await stack.pool.query(`UPDATE licenses SET expires_at = LOCALTIMESTAMP - INTERVAL '1 day' WHERE status = 'active'`);
    const s = await createSession(stack, admin);
    expect(s.status).toBe(403);
    expect(s.body.message).toMatch(/^license expired on \d{4}-\d\d-\d\d \(community tier\): no new sessions until it is renewed/);
    const u = await createUser(stack, admin);
    expect(u.status).toBe(403);
    expect(u.body.message).toMatch(/^license expired on .* no new users/);
    expect((await stack.call('GET', '/api/v1/license', undefined, admin)).body).toMatchObject({
      expired: true,
      warnings: [expect.stringMatching(/^license expired/), 'limit reached: 10 of 10 users (100.0%)', 'limit reached: 20 of 20 sessions (100.0%)'],
    });

    // Not active (v1: no active license → its middleware let everything through).
    await stack.pool.query(`UPDATE licenses SET status = 'inactive'`);
    expect((await stack.call('GET', '/api/v1/license', undefined, admin)).body).toMatchObject({ licensed: false });
    expect((await createSession(stack, admin)).status).toBe(201);
    expect((await createUser(stack, admin)).status).toBe(201);

    // An active row without limits (NULL = unlimited, like v1's enterprise tier).
    await stack.pool.query(`UPDATE licenses SET status = 'active', expires_at = LOCALTIMESTAMP + INTERVAL '1 year', max_sessions = NULL, max_users = NULL`);
    expect((await createSession(stack, admin)).status).toBe(201);
    expect((await createUser(stack, admin)).status).toBe(201);
  });

  test("while a session limit applies, the agent still gets a new session's start with it, before any worker runs", async () => {
    // The licence's lock is held by every create's admission, so the start is issued right after
    // the row commits rather than in its transaction (api/sessions/start-command.ts).
    await stack.pool.query(`UPDATE licenses SET max_sessions = 1000 WHERE status = 'active'`);
    await stack.worker.kill('SIGKILL');
    let id = '';
    try {
      const created = await createSession(stack, admin);
      expect(created.status).toBe(201);
      id = created.body.id;
      const r = await stack.pool.query(
        `SELECT c.command_type, c.status, c.agent_id = s.agent_id AS on_its_agent
           FROM agent_commands c JOIN sessions s ON s.id = c.session_id WHERE c.session_id = $1`,
        [id],
      );
      expect(r.rows).toEqual([{ command_type: 'start_session', status: expect.stringMatching(/^(sent|ack|completed)$/), on_its_agent: true }]);
    } finally {
      await stack.startWorker();
    }
    await stack.waitForState(admin, id, 'running');
  });
});
