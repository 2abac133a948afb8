/**
 * Issue 13 (3): per-user quotas from v1's user_quotas, enforced atomically at create and at wake
 * (the session workflow's wake path), and agents' MAX_CPU / MAX_MEMORY honoured by placement. On
 * the real stack with protocol-faithful fake agents. The built-in `terminal` template asks for
 * 1000m CPU and 2Gi memory.
 */
import { Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

const create = (stack: Stack, admin: string, user: string, template = 'terminal') =>
  stack.call('POST', '/api/v1/sessions', { user, template, platform: 'docker' }, admin);

async function addUser(stack: Stack, admin: string, username: string, quota?: { max_sessions: number; max_cpu: string; max_memory: string }) {
  expect((await stack.call('POST', '/api/v1/users', { username, password: `${username}-password` }, admin)).status).toBe(201);
  if (quota) expect((await stack.call('PUT', `/api/v1/users/${username}/quota`, quota, admin)).status).toBe(200);
}

describe('per-user quotas (user_quotas)', () => {
  const stack = new Stack('quotas');
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent('fake-quota-1', { MAX_SESSIONS: '100' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('concurrent creates at the limit: exactly max_sessions succeed, the others are refused naming the limit', async () => {
    await addUser(stack, admin, 'alice', { max_sessions: 3, max_cpu: '100000m', max_memory: '1Ti' });
    const results = await Promise.all(Array.from({ length: 8 }, () => create(stack, admin, 'alice')));
    const ok = results.filter((r) => r.status === 201);
    const refused = results.filter((r) => r.status !== 201);
    expect(ok).toHaveLength(3);
    expect(refused).toHaveLength(5);
    for (const r of refused) {
      expect(r.status).toBe(403);
      expect(r.body.message).toBe('quota exceeded: 3 of 3 sessions in use (user_quotas.max_sessions)');
    }
    const rows = await stack.pool.query(`SELECT count(*)::int AS n FROM sessions s JOIN users u ON u.id::text = s.user_id WHERE u.username = 'alice'`);
    expect(rows.rows[0].n).toBe(3);
    // A user without a quota row has no per-user limit.
    await addUser(stack, admin, 'free');
    const many = await Promise.all(Array.from({ length: 6 }, () => create(stack, admin, 'free')));
    expect(many.map((r) => r.status)).toEqual(Array(6).fill(201));
  });

  test("cpu and memory: the sum of the templates' resources is capped", async () => {
    await addUser(stack, admin, 'bob', { max_sessions: 10, max_cpu: '2500m', max_memory: '1Ti' });
    expect((await create(stack, admin, 'bob')).status).toBe(201);
    expect((await create(stack, admin, 'bob')).status).toBe(201);
    const cpu = await create(stack, admin, 'bob');
    expect(cpu.status).toBe(403);
    expect(cpu.body.message).toMatch(/^quota exceeded: cpu 3000m would exceed 2500m \(user_quotas\.max_cpu; 2000m in use, this session needs 1000m\)$/);

    await addUser(stack, admin, 'carol', { max_sessions: 10, max_cpu: '64', max_memory: '5Gi' });
    expect((await create(stack, admin, 'carol')).status).toBe(201);
    expect((await create(stack, admin, 'carol')).status).toBe(201);
    const mem = await create(stack, admin, 'carol');
    expect(mem.status).toBe(403);
    expect(mem.body.message).toMatch(/^quota exceeded: memory 6Gi would exceed 5Gi \(user_quotas\.max_memory/);
  });

  test('a wake over quota is refused by the workflow (403, stays hibernated); allowed after a stop; concurrent wakes never exceed it', async () => {
    await addUser(stack, admin, 'dave', { max_sessions: 2, max_cpu: '100000m', max_memory: '1Ti' });
    const [a, b] = [(await create(stack, admin, 'dave')).body.id, (await create(stack, admin, 'dave')).body.id];
    for (const id of [a, b]) await stack.waitForState(admin, id, 'running');
    expect((await stack.call('POST', `/api/v1/sessions/${a}/hibernate`, undefined, admin)).body.state).toBe('hibernated');
    const c = await create(stack, admin, 'dave');
    expect(c.status).toBe(201);
    await stack.waitForState(admin, c.body.id, 'running');

    const refused = await stack.call('POST', `/api/v1/sessions/${a}/wake`, undefined, admin);
    expect(refused.status).toBe(403);
    expect(refused.body.message).toBe('quota exceeded: 2 of 2 sessions in use (user_quotas.max_sessions)');
    expect((await stack.call('GET', `/api/v1/sessions/${a}`, undefined, admin)).body.state).toBe('hibernated');
    // The console's bulk wake gets the same answer.
    const bulk = await stack.call('POST', '/api/v1/sessions/bulk', { action: 'wake', ids: [a] }, admin);
    expect(bulk.body.results[0]).toMatchObject({ ok: false, status: 403, error: 'quota exceeded: 2 of 2 sessions in use (user_quotas.max_sessions)' });

    expect((await stack.call('DELETE', `/api/v1/sessions/${c.body.id}`, undefined, admin)).body.state).toBe('terminated');
    const woke = await stack.call('POST', `/api/v1/sessions/${a}/wake?wait=30`, undefined, admin);
    expect(woke.status).toBe(200);
    expect(woke.body.state).toBe('running');
    expect((await stack.pool.query('SELECT 1 FROM quota_reservations WHERE session_id = $1', [a])).rowCount).toBe(0);

    // Two hibernated sessions, room for one more: two concurrent wakes, exactly one succeeds.
    for (const id of [a, b]) expect((await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin)).body.state).toBe('hibernated');
    const x = (await create(stack, admin, 'dave')).body.id;
    await stack.waitForState(admin, x, 'running');
    const wakes = await Promise.all([a, b].map((id) => stack.call('POST', `/api/v1/sessions/${id}/wake?wait=30`, undefined, admin)));
    expect(wakes.map((w) => w.status).sort()).toEqual([200, 403]);
    const running = await stack.pool.query(
      `SELECT count(*)::int AS n FROM sessions s JOIN users u ON u.id::text = s.user_id WHERE u.username = 'dave' AND s.state IN ('pending', 'running')`,
    );
    expect(running.rows[0].n).toBe(2);
  });
});

describe('an owner without a quota', () => {
  // Wakes take 3 s on this agent, so a limit can be set while one is under way.
  const stack = new Stack('quotas-unlimited');
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent('fake-quota-slow', { MAX_SESSIONS: '100', FAKE_OP_DELAY: '3s' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('a waking session is reserved (one statement, no lock): a limit set during the wake counts it', async () => {
    await addUser(stack, admin, 'dora');
    const a = (await create(stack, admin, 'dora')).body.id;
    await stack.waitForState(admin, a, 'running');
    expect((await stack.call('POST', `/api/v1/sessions/${a}/hibernate?wait=30`, undefined, admin)).body.state).toBe('hibernated');
    expect((await stack.call('POST', `/api/v1/sessions/${a}/wake?wait=0`, undefined, admin)).status).toBe(202);
    await waitFor('the wake reserved', async () => (await stack.pool.query('SELECT 1 FROM quota_reservations WHERE session_id = $1', [a])).rowCount, 10_000);
    expect((await stack.call('PUT', '/api/v1/users/dora/quota', { max_sessions: 1, max_cpu: '100000m', max_memory: '1Ti' }, admin)).status).toBe(200);
    const refused = await create(stack, admin, 'dora');
    expect(refused.status).toBe(403);
    expect(refused.body.message).toBe('quota exceeded: 1 of 1 sessions in use (user_quotas.max_sessions)');
    await stack.waitForState(admin, a, 'running');
    expect((await stack.pool.query('SELECT 1 FROM quota_reservations WHERE session_id = $1', [a])).rowCount).toBe(0);
  });
});

describe("agents' MAX_CPU and MAX_MEMORY", () => {
  const stack = new Stack('agent-resources', { PLACEMENT_WHEN_FULL: 'fail' });
  const AGENT = 'fake-res-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    // 2 cores, 5 GiB: two terminal sessions (1000m, 2Gi each) fit, a third does not.
    await stack.startFakeAgent(AGENT, { MAX_SESSIONS: '50', MAX_CPU: '2', MAX_MEMORY: '5' });
    admin = await stack.login();
    await stack.pool.query(
      `INSERT INTO templates (name, display_name, category, manifest)
       SELECT 'bigmem', 'Big memory', category, jsonb_set(manifest, '{defaultResources}', '{"cpu": "100m", "memory": "3Gi"}') FROM templates WHERE name = 'terminal'`,
    );
  });
  afterAll(() => stack.stop());

  test('placement never exceeds the CPU or memory the agent reported', async () => {
    const agent = await stack.pool.query(`SELECT capacity FROM agents WHERE agent_id = $1`, [AGENT]);
    expect(agent.rows[0].capacity).toMatchObject({ max_cpu: 2, max_memory: 5 });
    const ids: string[] = [];
    for (let i = 0; i < 2; i++) ids.push((await create(stack, admin, 'admin')).body.id);
    for (const id of ids) await stack.waitForState(admin, id, 'running');
    const third = (await create(stack, admin, 'admin')).body.id;
    const failed = await stack.waitForState(admin, third, 'failed');
    expect(failed.error).toMatch(/no capacity: no online docker agent has the CPU or memory left \(MAX_CPU\/MAX_MEMORY\)/);
    expect(failed.error).toMatch(/cpu 2000m of 2000m/);

    // Memory: one terminal left (1000m, 2Gi) + bigmem (100m, 3Gi) = 5Gi fits; a second bigmem does not.
    expect((await stack.call('DELETE', `/api/v1/sessions/${ids[0]}`, undefined, admin)).body.state).toBe('terminated');
    const big = (await create(stack, admin, 'admin', 'bigmem')).body.id;
    await stack.waitForState(admin, big, 'running');
    const big2 = (await create(stack, admin, 'admin', 'bigmem')).body.id;
    const refused = await stack.waitForState(admin, big2, 'failed');
    expect(refused.error).toMatch(/memory 5Gi of 5Gi; this session needs cpu 100m, memory 3Gi/);
    await waitFor('nothing over capacity', async () => true);
  });
});
