/**
 * Issue 13 (5): every state-changing API call (answered or refused) and the automatic actions are
 * written to v1's audit_log with v1's columns; no password or token ever lands there; admins read
 * it at GET /api/v1/audit with filters and keyset paging.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

const V1_CHANGES_KEYS = ['duration_ms', 'error', 'metadata', 'method', 'path', 'request_body', 'response_body', 'status_code'];

describe('audit log', () => {
  const stack = new Stack('audit');
  const AGENT = 'fake-audit-1';
  let admin: string;
  let adminId: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT);
    admin = await stack.login();
    adminId = (await stack.pool.query(`SELECT id::text AS id FROM users WHERE username = 'admin'`)).rows[0].id;
  });
  afterAll(() => stack.stop());

  const rows = async (where = 'TRUE', args: unknown[] = []) =>
    (
      await stack.pool.query(
        `SELECT id, user_id, action, resource_type, resource_id, changes, timestamp, ip_address FROM audit_log WHERE ${where} ORDER BY id`,
        args,
      )
    ).rows;
  const entry = (method: string, path: string, status: number) =>
    waitFor(`audit row ${method} ${path} ${status}`, async () => {
      const r = await rows(`action = $1 AND resource_type = $2 AND (changes->>'status_code')::int = $3`, [method, path, status]);
      return r[r.length - 1];
    }, 10_000, 50);

  test('every state-changing route writes a row with v1\'s columns, refused ones with their status; secrets never', async () => {
    const PASSWORD = 'alice-Secret-Passw0rd!';
    const NEW_PASSWORD = 'alice-N3w-Secret-Passw0rd!';
    const created = await stack.call('POST', '/api/v1/users', { username: 'alice', password: PASSWORD, email: 'alice@example.com' }, admin);
    expect(created.status).toBe(201);
    const aliceId = created.body.id;
    expect((await stack.call('PUT', '/api/v1/users/alice/quota', { max_sessions: 5, max_cpu: '4000m', max_memory: '16Gi' }, admin)).status).toBe(200);
    expect((await stack.call('PATCH', '/api/v1/users/alice', { role: 'user' }, admin)).status).toBe(200);
    expect((await stack.call('POST', '/api/v1/users/alice/password', { password: PASSWORD }, admin)).status).toBe(204);
    const login = await stack.call('POST', '/api/v1/auth/login', { username: 'alice', password: PASSWORD });
    expect(login.status).toBe(200);
    const wrong = await stack.call('POST', '/api/v1/auth/login', { username: 'alice', password: 'not-' + PASSWORD });
    expect(wrong.status).toBe(401);
    const changed = await stack.call('POST', '/api/v1/auth/password', { current_password: PASSWORD, new_password: NEW_PASSWORD }, login.body.token);
    expect(changed.status).toBe(200);
    const alice = changed.body.token;
    const refused = await stack.call('POST', '/api/v1/users', { username: 'mallory', password: 'mallory-password' }, alice);
    expect(refused.status).toBe(403);
    const session = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice);
    expect(session.status).toBe(201);
    await stack.waitForState(alice, session.body.id, 'running');
    expect((await stack.call('POST', `/api/v1/sessions/${session.body.id}/hibernate`, undefined, alice)).status).toBe(200);
    expect((await stack.call('POST', `/api/v1/sessions/${session.body.id}/wake`, undefined, alice)).status).toBe(200);
    expect((await stack.call('DELETE', `/api/v1/sessions/${session.body.id}`, undefined, alice)).status).toBe(200);
    expect((await stack.call('DELETE', '/api/v1/sessions/nope', undefined, alice)).status).toBe(404);
    const minted = await stack.call('POST', '/api/v1/agents/tokens', { agent_id: 'audit-agent-2' }, admin);
    expect(minted.status).toBe(201);
    const rotated = await stack.call('POST', '/api/v1/agents/audit-agent-2/tokens/rotate', {}, admin);
    expect(rotated.status).toBe(201);
    expect(typeof rotated.body.token).toBe('string');
    const unauthenticated = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' });
    expect(unauthenticated.status).toBe(401);

    const expected: Array<[string, string, number, string, string]> = [
      ['POST', '/api/v1/users', 201, adminId, aliceId],
      ['PUT', '/api/v1/users/alice/quota', 200, adminId, 'alice'],
      ['PATCH', '/api/v1/users/alice', 200, adminId, 'alice'],
      ['POST', '/api/v1/users/alice/password', 204, adminId, 'alice'],
      ['POST', '/api/v1/auth/login', 200, '', ''],
      ['POST', '/api/v1/auth/login', 401, '', ''],
      ['POST', '/api/v1/auth/password', 200, aliceId, ''],
      ['POST', '/api/v1/users', 403, aliceId, ''],
      ['POST', '/api/v1/sessions', 201, aliceId, session.body.id],
      ['POST', `/api/v1/sessions/${session.body.id}/hibernate`, 200, aliceId, session.body.id],
      ['POST', `/api/v1/sessions/${session.body.id}/wake`, 200, aliceId, session.body.id],
      ['DELETE', `/api/v1/sessions/${session.body.id}`, 200, aliceId, session.body.id],
      ['DELETE', '/api/v1/sessions/nope', 404, aliceId, 'nope'],
      ['POST', '/api/v1/agents/tokens', 201, adminId, ''],
      ['POST', '/api/v1/agents/audit-agent-2/tokens/rotate', 201, adminId, 'audit-agent-2'],
      ['POST', '/api/v1/sessions', 401, '', ''],
    ];
    for (const [method, path, status, userId, resourceId] of expected) {
      const r = await entry(method, path, status);
      expect({ user_id: r.user_id, action: r.action, resource_type: r.resource_type, ip: r.ip_address }).toEqual({
        user_id: userId,
        action: method,
        resource_type: path,
        ip: '127.0.0.1',
      });
      if (resourceId) expect(r.resource_id).toBe(resourceId);
      expect(Object.keys(r.changes).sort()).toEqual(V1_CHANGES_KEYS);
      expect(r.changes).toMatchObject({ method, path, status_code: status, request_body: null, response_body: null });
      expect(typeof r.changes.duration_ms).toBe('number');
      expect(Math.abs(new Date(r.timestamp + 'Z').getTime() - Date.now()) < 10 * 60_000 || r.timestamp instanceof Date).toBe(true);
      if (status >= 400) expect(r.changes.error).not.toBe('');
    }
    // What a request asked for is kept only by allow-list (here the login's username).
    expect((await entry('POST', '/api/v1/auth/login', 401)).changes.metadata.request).toEqual({ username: 'alice' });
    expect((await entry('POST', '/api/v1/sessions', 201)).changes.metadata.request).toEqual({ template: 'terminal', platform: 'docker' });
    // GETs are not state-changing: not recorded.
    expect(await rows(`action = 'GET'`)).toEqual([]);

    // No password, token or secret anywhere in the table.
    const dump = JSON.stringify(await rows());
    for (const secret of [PASSWORD, NEW_PASSWORD, 'not-' + PASSWORD, login.body.token, alice, minted.body.token, rotated.body.token]) {
      expect(secret.length).toBeGreaterThan(8);
      expect(dump).not.toContain(secret);
    }
    expect(dump).not.toMatch(/"password"|"new_password"|"current_password"|"token"/);
  });

  test('automatic actions: a reconciliation repair is recorded as user system', async () => {
    const s = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin);
    await stack.waitForState(admin, s.body.id, 'running');
    const agent = stack.agents.get(AGENT)!;
    await agent.kill('SIGKILL');
    const file = stack.fakeStateFile(AGENT);
    const st = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    delete st[s.body.id]; // its container vanished while the agent was away
    writeFileSync(file, JSON.stringify(st));
    await stack.startFakeAgent(AGENT);
    const r = await waitFor('the repair in the audit log', async () => (await rows(`action = 'session.reconcile_repair' AND resource_id = $1`, [s.body.id]))[0], 60_000, 100);
    expect(r).toMatchObject({ user_id: 'system', resource_type: 'session', ip_address: null });
    expect(r.changes).toMatchObject({ metadata: { repair: 'restart', platform: 'docker' }, request_body: null, response_body: null });
    expect(Object.keys(r.changes).sort()).toEqual(V1_CHANGES_KEYS);
  });

  test('GET /api/v1/audit: admins only, filters, keyset paging', async () => {
    const count = async () => Number((await stack.pool.query('SELECT count(*)::int AS n FROM audit_log')).rows[0].n);
    const before = await count();
    const alice = await stack.login('alice', 'alice-N3w-Secret-Passw0rd!');
    await waitFor('the login recorded', async () => (await count()) > before, 10_000, 50);
    const forbidden = await stack.call('GET', '/api/v1/audit', undefined, alice);
    expect(forbidden.status).toBe(403);
    expect((await stack.call('GET', '/api/v1/audit')).status).toBe(401);

    const all = await stack.call('GET', '/api/v1/audit?limit=1000', undefined, admin);
    expect(all.status).toBe(200);
    const total = await count();
    expect(all.body.length).toBe(total);
    // Newest first.
    const ts = all.body.map((e: any) => e.timestamp);
    expect([...ts].sort().reverse()).toEqual(ts);

    const byUser = await stack.call('GET', '/api/v1/audit?user=alice&action=DELETE', undefined, admin);
    expect(byUser.body.length).toBeGreaterThanOrEqual(2);
    for (const e of byUser.body) expect(e).toMatchObject({ username: 'alice', action: 'DELETE' });
    const system = await stack.call('GET', '/api/v1/audit?user=system&action=session.reconcile_repair', undefined, admin);
    expect(system.body.length).toBeGreaterThanOrEqual(1);
    const prefix = await stack.call('GET', `/api/v1/audit?resource_type=${encodeURIComponent('/api/v1/users*')}`, undefined, admin);
    expect(prefix.body.length).toBeGreaterThanOrEqual(5);
    for (const e of prefix.body) expect(e.resource_type.startsWith('/api/v1/users')).toBe(true);
    const byId = await stack.call('GET', '/api/v1/audit?resource_id=alice', undefined, admin);
    expect(byId.body.every((e: any) => e.resource_id === 'alice')).toBe(true);
    expect(byId.body.length).toBeGreaterThanOrEqual(3);
    const future = await stack.call('GET', `/api/v1/audit?since=${encodeURIComponent(new Date(Date.now() + 3600_000).toISOString())}`, undefined, admin);
    expect(future.body).toEqual([]);
    const past = await stack.call('GET', `/api/v1/audit?until=${encodeURIComponent(new Date(Date.now() - 3600_000).toISOString())}`, undefined, admin);
    expect(past.body).toEqual([]);

    // Pages of 3 walk every entry exactly once; x-total-count counts them all.
    const seen: number[] = [];
    let url = '/api/v1/audit?limit=3';
    for (let i = 0; i < 100; i++) {
      const res = await fetch(stack.url + url, { headers: { authorization: `Bearer ${admin}` } });
      expect(Number(res.headers.get('x-total-count'))).toBe(total);
      const page = (await res.json()) as Array<{ id: number }>;
      seen.push(...page.map((e) => e.id));
      const next = res.headers.get('x-next-cursor');
      if (!next) break;
      url = `/api/v1/audit?limit=3&cursor=${encodeURIComponent(next)}`;
    }
    expect(seen).toEqual(all.body.map((e: any) => e.id));
    expect((await stack.call('GET', '/api/v1/audit?cursor=garbage', undefined, admin)).status).toBe(400);
  });
});
