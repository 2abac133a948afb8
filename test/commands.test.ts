/**
 * Issue 10: every command runs once, on time, or not at all. On the real stack (Temporal,
 * PostgreSQL, gateway and worker processes) with protocol-faithful fake agents: the real agent
 * runtime (journal, de-duplication, result acknowledgement) over a driver without containers,
 * whose every create and remove is counted in an events file.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { TEST_ENV } from './harness/env';
import { Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

interface FakeEvent {
  session: string;
  generation: number | null;
  event: 'created' | 'removed' | 'hibernated' | 'woken';
}

function events(stack: Stack, agentId: string, sessionId?: string): FakeEvent[] {
  const file = stack.fakeEventsFile(agentId);
  if (!existsSync(file)) return [];
  const all = readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as FakeEvent);
  return sessionId ? all.filter((e) => e.session === sessionId) : all;
}

async function commands(stack: Stack, sessionId: string) {
  const r = await stack.pool.query<{ command_type: string; status: string; generation: number; error_message: string | null; withdrawn_at: Date | null }>(
    'SELECT command_type, status, generation, error_message, withdrawn_at FROM agent_commands WHERE session_id = $1 ORDER BY created_at',
    [sessionId],
  );
  return r.rows;
}

/** The worker's /metrics (its URL is in its log: "Worker metrics at …"). */
async function workerMetrics(stack: Stack): Promise<string> {
  const url = /Worker metrics at (http:\/\/\S+?\/metrics)/.exec(stack.worker.output)?.[1];
  if (!url) throw new Error('the worker did not log its metrics URL');
  return (await fetch(url)).text();
}

/** The payloads of a PostgreSQL channel's notifications from now on, until close(). */
async function listen(stack: Stack, channel: string): Promise<{ notified: string[]; close: () => Promise<void> }> {
  const listener = await stack.pool.connect();
  const notified: string[] = [];
  listener.on('notification', (n) => notified.push(n.payload ?? ''));
  await listener.query(`LISTEN ${channel}`);
  return {
    notified,
    close: async () => {
      await listener.query('UNLISTEN *');
      listener.release();
    },
  };
}

const create = (stack: Stack, admin: string, extra: Record<string, unknown> = {}) =>
  stack.call('POST', '/api/v1/sessions', { user: 'alice', template: 'terminal', platform: 'docker', ...extra }, admin);

describe('a stop always wins over a start', () => {
  // The agent acknowledges at once and needs 6 s before it would create anything.
  const stack = new Stack('stop-wins');
  const AGENT = 'fake-slow-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT, { FAKE_START_DELAY: '6s' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('DELETE during a start that hangs on the agent: terminated within 2 s, no container ever created', async () => {
    const created = await create(stack, admin);
    expect(created.status).toBe(201);
    const id = created.body.id;
    await waitFor('start command acknowledged by the agent', async () => (await commands(stack, id)).some((c) => c.status === 'ack'), 30_000, 20);
    const t0 = Date.now();
    const del = await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin);
    const ms = Date.now() - t0;
    expect({ status: del.status, state: del.body.state, message: del.body.message }).toEqual({ status: 200, state: 'terminated', message: undefined });
    expect(ms).toBeLessThan(2000);
    const rows = await commands(stack, id);
    expect(rows[0]).toEqual(expect.objectContaining({ command_type: 'start_session', status: 'failed' }));
    expect(rows[0].withdrawn_at).not.toBeNull();
    // Past the moment the agent would have created it: it abandoned the command instead.
    await sleep(7000);
    expect(events(stack, AGENT, id).filter((e) => e.event === 'created')).toEqual([]);
    expect(stack.agents.get(AGENT)!.output).toMatch(/abandoned by the control plane/);
  });

  test('a stop that reaches the workflow with its start (first activation): the start is withdrawn and never runs', async () => {
    // No worker: the workflow start and the stop Update wait in Temporal, and reach the new
    // worker's first activation together.
    await stack.worker.kill('SIGKILL');
    const created = await create(stack, admin);
    expect(created.status).toBe(201);
    const id = created.body.id;
    const del = stack.call('DELETE', `/api/v1/sessions/${id}?wait=30`, undefined, admin);
    await sleep(500);
    await stack.startWorker();
    const res = await del;
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('terminated');
    // The gateway issued the start with the session (api/sessions/start-command.ts), so the agent
    // has had it since the create; the workflow's first activation withdrew it, and past the moment
    // the agent would have created the session it has made nothing.
    const rows = await commands(stack, id);
    expect(rows.map((c) => `${c.command_type}:${c.status}:${c.withdrawn_at ? 'withdrawn' : 'open'}`)).toEqual(['start_session:failed:withdrawn']);
    await sleep(7000);
    expect(events(stack, AGENT, id)).toEqual([]);
  });
});

describe('a start abandoned between its two steps is undone', () => {
  // The agent creates the "container" at once and starts it 6 s later (as Docker's create, then start).
  const stack = new Stack('stop-between-steps');
  const AGENT = 'fake-twostep-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT, { FAKE_RUN_DELAY: '6s' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('DELETE after the container was created, before it runs: the agent removes what it created', async () => {
    const created = await create(stack, admin);
    expect(created.status).toBe(201);
    const id = created.body.id;
    await waitFor('container created on the agent', async () => events(stack, AGENT, id).some((e) => e.event === 'created'), 30_000, 20);
    const del = await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin);
    expect({ status: del.status, state: del.body.state }).toEqual({ status: 200, state: 'terminated' });
    // The start stops itself before its second step (abandoned) and is then undone: removed, not left created.
    await waitFor('the created container removed', async () => events(stack, AGENT, id).some((e) => e.event === 'removed'), 20_000);
    expect(events(stack, AGENT, id).map((e) => e.event)).toEqual(['created', 'removed']);
    // (The agent logs the undo after its driver removed the container: wait for the line.)
    await waitFor('the undo logged', async () => /abandoned command undone/.test(stack.agents.get(AGENT)!.output), 10_000);
  });
});

describe('deadlines: an expired or withdrawn command never runs, also after the agent restarts', () => {
  const stack = new Stack('deadlines', { SESSION_START_TIMEOUT: '4s', AGENT_HEARTBEAT_TIMEOUT: '3s', AGENT_SWEEP_INTERVAL: '500ms' });
  const AGENT = 'fake-deadline-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT);
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('agent frozen with the start in its socket, thawed after the deadline: it refuses the start (expired)', async () => {
    const agent = stack.agents.get(AGENT)!;
    agent.signal('SIGSTOP');
    let id = '';
    try {
      const created = await create(stack, admin);
      id = created.body.id;
      await waitFor('start command sent', async () => (await commands(stack, id)).some((c) => c.status === 'sent'), 30_000, 20);
      const failed = await stack.waitForState(admin, id, 'failed', 30_000);
      expect(failed.error).toMatch(/start timed out after 4s/);
    } finally {
      agent.signal('SIGCONT');
    }
    await agent.waitForLog(/registered successfully/, 30_000);
    await sleep(1000);
    expect(agent.output).toMatch(/command refused.*expired|expired before it ran/);
    expect(events(stack, AGENT, id)).toEqual([]);
    expect((await commands(stack, id)).map((c) => `${c.command_type}:${c.status}`)).toEqual(['start_session:failed']);
    // The spec's failure counter moves (on the worker, with the reason).
    expect(await workerMetrics(stack)).toMatch(/^streamspace_session_failures_total\{platform="docker",reason="start_timeout"\} [1-9]/m);
  });

  test('agent killed while holding a sent command, restarted after the start timed out: nothing is re-delivered or run', async () => {
    const agent = stack.agents.get(AGENT)!;
    agent.signal('SIGSTOP');
    const created = await create(stack, admin);
    const id = created.body.id;
    await waitFor('start command sent', async () => (await commands(stack, id)).some((c) => c.status === 'sent'), 30_000, 20);
    await agent.kill('SIGKILL');
    await stack.waitForState(admin, id, 'failed', 30_000);
    await stack.startFakeAgent(AGENT);
    await sleep(1500);
    expect(events(stack, AGENT, id)).toEqual([]);
    // Not even delivered: the control plane does not re-deliver a withdrawn command (the agent's
    // journal would refuse it too, but it never gets the chance).
    expect(agent.output).not.toMatch(new RegExp(`"session":"${id}"[^\n]*command refused`));
    const rows = await commands(stack, id);
    expect(rows).toHaveLength(1);
    expect(rows[0].withdrawn_at).not.toBeNull();
  });
});

describe('results are acknowledged', () => {
  const stack = new Stack('result-ack');
  const AGENT = 'fake-ack-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT, { FAKE_START_DELAY: '300ms' });
    admin = await stack.login();
  });
  afterAll(async () => {
    await stack.pool.query('DROP TRIGGER IF EXISTS refuse_completed ON agent_commands').catch(() => undefined);
    await stack.stop();
  });

  test('PostgreSQL refuses the completed write: the agent re-sends it until it is recorded; the session runs', async () => {
    // A real database error on the write of `completed` (not a mock): a trigger refuses it.
    await stack.pool.query(`
      CREATE OR REPLACE FUNCTION refuse_completed() RETURNS trigger AS $$
      BEGIN RAISE EXCEPTION 'injected fault: cannot record completed'; END $$ LANGUAGE plpgsql;
      DROP TRIGGER IF EXISTS refuse_completed ON agent_commands;
      CREATE TRIGGER refuse_completed BEFORE UPDATE ON agent_commands
        FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION refuse_completed();`);
    const created = await create(stack, admin);
    const id = created.body.id;
    await waitFor('agent created the session', async () => events(stack, AGENT, id).some((e) => e.event === 'created'), 30_000, 50);
    await sleep(4000); // at least one re-send refused too
    expect((await commands(stack, id))[0].status).toBe('ack');
    await stack.pool.query('DROP TRIGGER refuse_completed ON agent_commands');
    const running = await stack.waitForState(admin, id, 'running', 30_000);
    expect(running.state).toBe('running');
    expect((await commands(stack, id)).map((c) => `${c.command_type}:${c.status}`)).toEqual(['start_session:completed']);
    expect(events(stack, AGENT, id).filter((e) => e.event === 'created')).toHaveLength(1);
    const metrics = await (await fetch(`${stack.url}/metrics`)).text();
    expect(metrics).toMatch(/streamspace_command_results_acknowledged_total\{outcome="recorded"\} [1-9]/);
  });
});

describe('reconciliation repairs what the agent really has', () => {
  const stack = new Stack('reconcile');
  const AGENT = 'fake-reconcile-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT);
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('vanished, orphaned and wrongly running sessions are restarted, removed and hibernated again', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const c = await create(stack, admin);
      ids.push(c.body.id);
    }
    for (const id of ids) await stack.waitForState(admin, id, 'running');
    const [vanished, orphan, sleeper] = ids;
    expect((await stack.call('DELETE', `/api/v1/sessions/${orphan}`, undefined, admin)).body.state).toBe('terminated');
    expect((await stack.call('POST', `/api/v1/sessions/${sleeper}/hibernate`, undefined, admin)).body.state).toBe('hibernated');

    // While the agent is down its platform changes behind the control plane's back.
    const agent = stack.agents.get(AGENT)!;
    await agent.kill('SIGKILL');
    const file = stack.fakeStateFile(AGENT);
    const st = JSON.parse(readFileSync(file, 'utf8')) as Record<string, { state: string; generation: number }>;
    delete st[vanished]; // the running session's container is gone
    st[orphan] = { state: 'running', generation: 1 }; // a terminated session's container is back
    st[sleeper].state = 'running'; // a hibernated session runs
    writeFileSync(file, JSON.stringify(st));
    await stack.startFakeAgent(AGENT);

    await waitFor('the vanished session re-created', async () => events(stack, AGENT, vanished).filter((e) => e.event === 'created').length === 2, 30_000);
    await waitFor('the orphan removed', async () => events(stack, AGENT, orphan).filter((e) => e.event === 'removed').length === 2, 30_000);
    await waitFor('the sleeper hibernated again', async () => events(stack, AGENT, sleeper).filter((e) => e.event === 'hibernated').length === 2, 30_000);
    const final = JSON.parse(readFileSync(file, 'utf8')) as Record<string, { state: string }>;
    expect(final[vanished]?.state).toBe('running');
    expect(final[orphan]).toBeUndefined();
    expect(final[sleeper]?.state).toBe('hibernated');
    expect((await stack.call('GET', `/api/v1/sessions/${vanished}`, undefined, admin)).body.state).toBe('running');
    expect((await stack.call('GET', `/api/v1/sessions/${sleeper}`, undefined, admin)).body.state).toBe('hibernated');
    // Each re-creation has its own, newer generation: nothing ran twice.
    const gens = events(stack, AGENT, vanished)
      .filter((e) => e.event === 'created')
      .map((e) => e.generation);
    expect(new Set(gens).size).toBe(2);
    // The repair is counted when its workflow has seen the outcome, just after the agent acted.
    const repaired = (action: string) => new RegExp(`^streamspace_reconcile_repairs_total\\{action="${action}"\\} 1$`, 'm');
    const actions = ['restart', 'hibernate_again', 'remove_orphan'];
    let m = '';
    await waitFor(
      'the repairs counted',
      async () => {
        m = await workerMetrics(stack);
        return actions.every((a) => repaired(a).test(m));
      },
      10_000,
      100,
    ).catch(() => undefined); // the expectations below say which one is missing
    for (const action of actions) expect(m).toMatch(repaired(action));
  });
});

describe('capacity is reserved atomically', () => {
  const stack = new Stack('capacity', { PLACEMENT_WHEN_FULL: 'fail' });
  const AGENT = 'fake-capacity-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT, { MAX_SESSIONS: '5', FAKE_START_DELAY: '200ms' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('50 concurrent creates on an agent with 5 slots: 5 run, 45 fail with "no capacity", never overfilled', async () => {
    const created = await Promise.all(Array.from({ length: 50 }, () => create(stack, admin)));
    expect(created.every((c) => c.status === 201)).toBe(true);
    const ids = created.map((c) => c.body.id as string);
    const final = await waitFor(
      'all 50 settled',
      async () => {
        const r = await stack.pool.query<{ id: string; state: string; error_message: string | null }>(
          'SELECT id, state, error_message FROM sessions WHERE id = ANY($1)',
          [ids],
        );
        return r.rows.every((s) => s.state === 'running' || s.state === 'failed') ? r.rows : undefined;
      },
      90_000,
      200,
    );
    expect(final.filter((s) => s.state === 'running')).toHaveLength(5);
    const failed = final.filter((s) => s.state === 'failed');
    expect(failed).toHaveLength(45);
    for (const f of failed) expect(f.error_message).toMatch(/no capacity/);
    // At the driver: exactly 5 created, never a capacity refusal.
    expect(events(stack, AGENT).filter((e) => e.event === 'created')).toHaveLength(5);
    expect(stack.agents.get(AGENT)!.output).not.toMatch(/at capacity/);
    // (Counted by the workflow just after it writes the state: wait for the last count to land.)
    const counted = /^streamspace_session_failures_total\{platform="docker",reason="no_capacity"\} 45$/m;
    const started = /^streamspace_session_start_seconds_count\{platform="docker"\} 5$/m;
    await waitFor('45 failures and 5 starts counted', async () => ((m) => counted.test(m) && started.test(m))(await workerMetrics(stack)), 15_000).catch(
      () => undefined,
    );
    const m = await workerMetrics(stack);
    expect(m).toMatch(counted);
    expect(m).toMatch(started);
  });
});

describe("the pod holding the agent socket sends a new session's start itself", () => {
  // No sweep to fall back on: only the gateway's own delivery after the commit can bring the start.
  const stack = new Stack('direct-start', { AGENT_SWEEP_INTERVAL: '1h' });
  const AGENT = 'fake-direct-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT);
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('create → running with no NOTIFY for the agent and no sweep', async () => {
    const agentDbId = (await stack.pool.query<{ id: string }>('SELECT id FROM agents WHERE agent_id = $1', [AGENT])).rows[0].id;
    const { notified, close } = await listen(stack, 'streamspace_command_pending');
    try {
      const c = await create(stack, admin);
      expect(c.status).toBe(201);
      await waitFor(
        'running',
        async () => (await stack.pool.query('SELECT 1 FROM sessions WHERE id = $1 AND state = $2', [c.body.id, 'running'])).rowCount,
        30_000,
      );
      expect(notified.filter((p) => p === agentDbId)).toEqual([]);
      expect(events(stack, AGENT, c.body.id as string).map((e) => e.event)).toEqual(['created']);
    } finally {
      await close();
    }
  });

  test('every finished command is announced once on streamspace_command_done, with its id', async () => {
    const { notified, close } = await listen(stack, 'streamspace_command_done');
    try {
      const c = await create(stack, admin);
      expect(c.status).toBe(201);
      const id = c.body.id as string;
      await stack.waitForState(admin, id, 'running');
      expect((await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin)).body.state).toBe('hibernated');
      const done = await stack.pool.query<{ id: string; status: string }>(`SELECT id, status FROM agent_commands WHERE session_id = $1 ORDER BY created_at`, [
        id,
      ]);
      expect(done.rows.map((r) => r.status)).toEqual(['completed', 'completed']);
      await waitFor('both notices', async () => done.rows.every((r) => notified.includes(r.id)), 10_000);
      for (const r of done.rows) expect(notified.filter((p) => p === r.id)).toHaveLength(1);
    } finally {
      await close();
    }
  });
});

describe('HTTP never hangs on an agent; create is orphan-proof', () => {
  const stack = new Stack('http-202', { SESSION_REAPER_INTERVAL: '500ms', SESSION_REAPER_GRACE: '1s' });
  const AGENT = 'fake-http-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT, { FAKE_OP_DELAY: '4s' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('hibernate on a slow agent answers 202 with the transition; GET shows it; it completes', async () => {
    const id = (await create(stack, admin)).body.id;
    await stack.waitForState(admin, id, 'running');
    const t0 = Date.now();
    const hib = await stack.call('POST', `/api/v1/sessions/${id}/hibernate?wait=1`, undefined, admin);
    expect(Date.now() - t0).toBeLessThan(2500);
    expect(hib.status).toBe(202);
    expect(hib.body.transition).toBe('hibernating');
    const during = await stack.call('GET', `/api/v1/sessions/${id}`, undefined, admin);
    expect(during.body.transition).toBe('hibernating');
    // From the command row: sent, or acknowledged by the agent (which the workflow never knew).
    expect(during.body.progress).toMatch(/hibernate_session sent to fake-http-1|^fake-http-1 is working on it/);
    await stack.waitForState(admin, id, 'hibernated', 30_000);
    // The default wait (5 s) covers the 4 s wake: a plain 200 as before.
    const wake = await stack.call('POST', `/api/v1/sessions/${id}/wake`, undefined, admin);
    expect(wake.status).toBe(200);
    expect(wake.body.state).toBe('running');
    const bad = await stack.call('POST', `/api/v1/sessions/${id}/wake?wait=600`, undefined, admin);
    expect(bad.status).toBe(400);
  });

  test('a session row left without its workflow (gateway died after the INSERT) is adopted and runs', async () => {
    const user = await stack.pool.query<{ id: string }>(`SELECT id::text FROM users WHERE username = 'admin'`);
    const id = randomUUID(); // workflow ids are namespace-wide: never reuse one across runs
    await stack.pool.query(
      `INSERT INTO sessions (id, user_id, template_name, state, platform, tags, persistent_home, workflow_id, workflow_confirmed, created_at)
       VALUES ($1, $2, 'terminal', 'pending', 'docker', '[]', true, $3, false, NOW() - INTERVAL '5 seconds')`,
      [id, user.rows[0].id, `session/${id}`],
    );
    await stack.waitForState(admin, id, 'running', 30_000);
    const row = await stack.pool.query('SELECT workflow_confirmed FROM sessions WHERE id = $1', [id]);
    expect(row.rows[0].workflow_confirmed).toBe(true);
    expect((await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin)).body.state).toBe('terminated');
  });
});

describe('liveness is owned by the pod holding the agent socket', () => {
  // The agent's socket is on pod 1, whose sweep is slow; pod 2 sweeps every 300 ms.
  const stack = new Stack('liveness', { AGENT_HUB_BACKEND: 'redis', REDIS_URL: TEST_ENV.redisUrl, AGENT_HEARTBEAT_TIMEOUT: '3s', AGENT_SWEEP_INTERVAL: '60s' });
  const AGENT = 'fake-live-1';
  let pod2: Awaited<ReturnType<Stack['startApiPod']>>;
  beforeAll(async () => {
    await stack.start();
    pod2 = await stack.startApiPod('api-2', { AGENT_SWEEP_INTERVAL: '300ms' });
    await stack.startFakeAgent(AGENT);
  });
  afterAll(() => stack.stop());

  test('another pod marks the agent offline on a late heartbeat: its next heartbeat brings it back online', async () => {
    // As if heartbeats had been delayed (a slow database): pod 2's sweep sees the agent stale.
    const offline = pod2.proc.waitForLog(/agent missed its heartbeats; marked offline/, 10_000);
    await stack.pool.query(`UPDATE agents SET last_heartbeat = NOW() - INTERVAL '1 hour' WHERE agent_id = $1`, [AGENT]);
    await offline;
    await sleep(3000); // several heartbeats of the agent, still on its first socket
    const r = await stack.pool.query<{ status: string; websocket_conn_id: string | null }>(`SELECT status, websocket_conn_id FROM agents WHERE agent_id = $1`, [
      AGENT,
    ]);
    expect(r.rows[0].status).toBe('online');
    expect(r.rows[0].websocket_conn_id).not.toBeNull();
    expect(stack.agents.get(AGENT)!.output.match(/registered successfully/g)).toHaveLength(1);
  });
});

describe('a 503 says why', () => {
  const stack = new Stack('no-worker-503');
  beforeAll(() => stack.start({ worker: false }));
  afterAll(() => stack.stop());

  test('an Update no worker accepts: 503 naming the cause, with Retry-After', async () => {
    const admin = await stack.login();
    const created = await stack.call<{ id: string }>('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin);
    expect(created.status).toBe(201);
    const res = await fetch(`${stack.url}/api/v1/sessions/${created.body.id}/hibernate?wait=0`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin}` },
    });
    expect(res.status).toBe(503);
    expect(res.headers.get('retry-after')).toBe('5');
    expect(((await res.json()) as { message: string }).message).toMatch(/did not accept the hibernate request within 10s \(is a worker running\?\)/);
  });
});

describe('a start the gateway cannot issue with its session', () => {
  const stack = new Stack('start-not-issued');
  const AGENT = 'fake-issue-1';
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT);
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('the database fails the first start insert: the create still answers 201 and the workflow starts it, once', async () => {
    // The create's transaction fails where it issues the start: it is written again without it.
    // A sequence is not rolled back, so only the first insert fails.
    const sql = `
      CREATE SEQUENCE test_fail_once;
      CREATE FUNCTION test_fail_first_start() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.command_type = 'start_session' AND nextval('test_fail_once') = 1 THEN RAISE EXCEPTION 'injected: the first start insert fails'; END IF;
        RETURN NEW;
      END $$;
      CREATE TRIGGER test_fail_first_start BEFORE INSERT ON agent_commands FOR EACH ROW EXECUTE FUNCTION test_fail_first_start();`;
    await stack.pool.query(sql);
    try {
      const created = await create(stack, admin);
      expect(created.status).toBe(201);
      await stack.waitForState(admin, created.body.id, 'running');
      expect((await commands(stack, created.body.id)).map((c) => `${c.command_type}:${c.status}`)).toEqual(['start_session:completed']);
      expect(events(stack, AGENT, created.body.id).filter((e) => e.event === 'created')).toHaveLength(1);
      expect(stack.api.output).toMatch(/start not issued with the session; its workflow places it/);
    } finally {
      await stack.pool.query('DROP TRIGGER test_fail_first_start ON agent_commands; DROP FUNCTION test_fail_first_start(); DROP SEQUENCE test_fail_once');
    }
  });
});
