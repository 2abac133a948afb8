/**
 * Issue 2 fault tests, all on the real services: a fault loses no session and no command.
 */
import { sessionWorkflowId, statusQuery } from '../workflows/session-api';
import { Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

async function commandRows(stack: Stack, sessionId: string) {
  const r = await stack.pool.query<{ command_type: string; status: string; retry_count: number }>(
    'SELECT command_type, status, retry_count FROM agent_commands WHERE session_id = $1 ORDER BY created_at',
    [sessionId],
  );
  return r.rows;
}

describe('faults on a running control plane', () => {
  const stack = new Stack('faults');
  const AGENT = 'docker-faults-1';
  let admin: string;

  beforeAll(async () => {
    await stack.start();
    await stack.startDockerAgent(AGENT, { VNC_PORT_RANGE: '15920-15939' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('agent killed mid-start and restarted: the session still reaches running with exactly one container', async () => {
    const created = await stack.call('POST', '/api/v1/sessions', { user: 'bob', template: 'terminal', platform: 'docker' }, admin);
    expect(created.status).toBe(201);
    const id = created.body.id;
    // Kill the agent the moment it has acknowledged the start (it is creating the container).
    await waitFor('start command acknowledged', async () => (await commandRows(stack, id)).some((c) => c.status === 'ack'), 30_000, 10);
    await stack.agents.get(AGENT)!.kill('SIGKILL');
    await stack.startDockerAgent(AGENT);
    await stack.waitForState(admin, id, 'running');
    const containers = await stack.containers(id);
    expect(containers).toHaveLength(1);
    expect(containers[0].State).toBe('running');
    const rows = await commandRows(stack, id);
    expect(rows).toEqual([expect.objectContaining({ command_type: 'start_session', status: 'completed' })]);
  });

  test('no worker at create: the gateway issues the start with the session; the workflow adopts it when a worker is back (one command, one container)', async () => {
    await stack.worker.kill('SIGKILL');
    let workerBack = false;
    try {
      const created = await stack.call('POST', '/api/v1/sessions', { user: 'erin', template: 'terminal', platform: 'docker' }, admin);
      expect(created.status).toBe(201);
      const id = created.body.id;
      // Placed and started by the agent while no workflow task can run.
      await waitFor('start command completed without a worker', async () => (await commandRows(stack, id)).some((c) => c.status === 'completed'), 60_000);
      expect(await stack.containers(id)).toHaveLength(1);
      await stack.startWorker();
      workerBack = true;
      await stack.waitForState(admin, id, 'running', 60_000);
      expect((await commandRows(stack, id)).map((c) => `${c.command_type}:${c.status}`)).toEqual(['start_session:completed']);
      expect(await stack.containers(id)).toHaveLength(1);
      const stopped = await stack.call('DELETE', `/api/v1/sessions/${id}?wait=30`, undefined, admin);
      expect({ status: stopped.status, state: stopped.body.state, message: stopped.body.message }).toEqual({
        status: 200,
        state: 'terminated',
        message: undefined,
      });
      expect(await stack.containers(id)).toHaveLength(0);
    } finally {
      if (!workerBack) await stack.startWorker();
    }
  });

  test('the workflow cannot be started (Temporal refuses): 503, and the start the gateway issued leaves nothing on the agent', async () => {
    // A gateway whose Temporal namespace does not exist: every workflow start fails.
    const pod = await stack.startApiPod('api-no-namespace', { TEMPORAL_NAMESPACE: `missing-${Date.now()}`, MIGRATE_ON_START: 'false' });
    // (Same JWT secret as the stack's own gateway: the admin's token is valid here.)
    const token = admin;
    const res = await fetch(`${pod.url}/api/v1/sessions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ user: 'frank', template: 'terminal', platform: 'docker' }),
    });
    const body = (await res.json()) as { message: string };
    expect(res.status).toBe(503);
    expect(body.message).toMatch(/cannot start the session workflow/);
    const r = await stack.pool.query<{ id: string; state: string }>(
      `SELECT s.id, s.state FROM sessions s JOIN users u ON u.id::text = s.user_id WHERE u.username = 'frank'`,
    );
    expect(r.rows).toEqual([expect.objectContaining({ state: 'failed' })]);
    const id = r.rows[0].id;
    // The start was withdrawn (the agent abandoned it) or, if the agent had run it, stopped.
    await waitFor(
      'start withdrawn or undone',
      async () => {
        const rows = await commandRows(stack, id);
        const start = rows.find((c) => c.command_type === 'start_session');
        return !!start && (start.status === 'failed' || rows.some((c) => c.command_type === 'stop_session' && c.status === 'completed'));
      },
      60_000,
    );
    await waitFor('no container left', async () => (await stack.containers(id)).length === 0, 30_000);
    await pod.proc.kill('SIGTERM');
  });

  test('worker killed mid-workflow: the workflow resumes on a new worker and the command is issued once', async () => {
    // Freeze the agent (its socket stays open) so the start command waits; kill the worker meanwhile.
    const agent = stack.agents.get(AGENT)!;
    agent.signal('SIGSTOP');
    try {
      const created = await stack.call('POST', '/api/v1/sessions', { user: 'carol', template: 'terminal', platform: 'docker' }, admin);
      expect(created.status).toBe(201);
      const id = created.body.id;
      await waitFor('start command sent', async () => (await commandRows(stack, id)).some((c) => c.status === 'sent'), 30_000);
      await stack.worker.kill('SIGKILL');
      await stack.startWorker();
      agent.signal('SIGCONT');
      await stack.waitForState(admin, id, 'running', 120_000);
      expect((await commandRows(stack, id)).map((c) => `${c.command_type}:${c.status}`)).toEqual(['start_session:completed']);
      expect(await stack.containers(id)).toHaveLength(1);
    } finally {
      agent.signal('SIGCONT');
    }
  });

  test('two concurrent hibernate requests: one hibernation', async () => {
    const created = await stack.call('POST', '/api/v1/sessions', { user: 'dave', template: 'terminal', platform: 'docker' }, admin);
    const id = created.body.id;
    await stack.waitForState(admin, id, 'running');
    const [a, b] = await Promise.all([
      stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin),
      stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin),
    ]);
    expect([a.status, b.status]).toEqual([200, 200]);
    expect([a.body.state, b.body.state]).toEqual(['hibernated', 'hibernated']);
    const rows = await commandRows(stack, id);
    expect(rows.filter((c) => c.command_type === 'hibernate_session')).toHaveLength(1);
    // Waking a session that is already running is a no-op, and hibernate/wake on a terminated one is refused.
    expect((await stack.call('POST', `/api/v1/sessions/${id}/wake`, undefined, admin)).body.state).toBe('running');
    expect((await stack.call('POST', `/api/v1/sessions/${id}/wake`, undefined, admin)).body.state).toBe('running');
    expect((await commandRows(stack, id)).filter((c) => c.command_type === 'wake_session')).toHaveLength(1);
    expect((await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin)).body.state).toBe('terminated');
    const late = await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin);
    expect(late.status).toBe(409);
    expect(late.body.message).toMatch(/terminated/);
  });

  test('control plane killed and restarted: the agent reconnects and running sessions stay manageable', async () => {
    const created = await stack.call('POST', '/api/v1/sessions', { user: 'erin', template: 'terminal', platform: 'docker' }, admin);
    const id = created.body.id;
    await stack.waitForState(admin, id, 'running');
    const agent = stack.agents.get(AGENT)!;
    const reRegistered = agent.waitForLog(/registered successfully/, 30_000);
    const killedAt = Date.now();
    await stack.restartApi();
    await reRegistered;
    const reconnectMs = Date.now() - killedAt;
    expect(reconnectMs).toBeLessThan(30_000);
    const hib = await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin);
    expect(hib.status).toBe(200);
    expect(hib.body.state).toBe('hibernated');
    expect((await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin)).body.state).toBe('terminated');
  });
});

describe('stuck starts have a way out', () => {
  // With the state kept as a search attribute (SESSION_STATE_SEARCH_ATTRIBUTE; off by default, see session-lifecycle.test).
  const stack = new Stack('stuck', { SESSION_START_TIMEOUT: '4s', AGENT_HEARTBEAT_TIMEOUT: '3s', SESSION_STATE_SEARCH_ATTRIBUTE: 'true' });
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('a start with no agent times out with a clear reason', async () => {
    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin);
    expect(created.status).toBe(201);
    const failed = await stack.waitForState(admin, created.body.id, 'failed', 60_000);
    expect(failed.error).toMatch(/start timed out after 4s/);
    expect(failed.error).toMatch(/no docker agent is online|placing session/);
    // The Temporal UI shows the failure too: the state as a search attribute, the reason in the memo.
    // (The row is written in the workflow task whose completion records the upsert: wait for that.)
    const handle = stack.temporal.workflow.getHandle(sessionWorkflowId(created.body.id));
    const desc = await waitFor(
      'the failed state in the search attributes',
      async () => {
        const d = await handle.describe();
        return (d.searchAttributes.StreamSpaceState as string[] | undefined)?.[0] === 'failed' ? d : undefined;
      },
      10_000,
    );
    expect(desc.memo).toMatchObject({ sessionId: created.body.id, error: expect.stringMatching(/start timed out after 4s/) });
  });

  test('a pending start can be cancelled by stopping the session', async () => {
    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin);
    const del = await stack.call('DELETE', `/api/v1/sessions/${created.body.id}`, undefined, admin);
    expect(del.status).toBe(200);
    expect(del.body.state).toBe('terminated');
    const desc = await stack.temporal.workflow.getHandle(sessionWorkflowId(created.body.id)).describe();
    expect(desc.status.name).toBe('COMPLETED');
  });
});

describe('long-lived sessions', () => {
  const stack = new Stack('history', { SESSION_HISTORY_LIMIT: '40' });
  let admin: string;
  beforeAll(async () => {
    await stack.start();
    await stack.startDockerAgent('docker-history-1', { VNC_PORT_RANGE: '15940-15949' });
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('the session workflow continues as new before its history grows large, keeping its state', async () => {
    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin);
    const id = created.body.id;
    await stack.waitForState(admin, id, 'running');
    for (let i = 0; i < 3; i++) {
      expect((await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin)).body.state).toBe('hibernated');
      expect((await stack.call('POST', `/api/v1/sessions/${id}/wake`, undefined, admin)).body.state).toBe('running');
    }
    const handle = stack.temporal.workflow.getHandle(sessionWorkflowId(id));
    const status = await waitFor('continue-as-new', async () => {
      const s = await handle.query(statusQuery);
      return s.runs >= 1 ? s : undefined;
    });
    expect(status.state).toBe('running');
    expect((await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin)).body.state).toBe('terminated');
    const kinds = (await commandRows(stack, id)).map((c) => c.command_type);
    expect(kinds.filter((k) => k === 'hibernate_session')).toHaveLength(3);
    expect(kinds.filter((k) => k === 'wake_session')).toHaveLength(3);
  });
});
