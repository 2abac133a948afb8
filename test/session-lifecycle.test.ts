/**
 * Issue 2, end to end through the HTTP API on real Temporal, PostgreSQL and dockerd:
 * login → create a Docker session → running (real container, VNC answers RFB 003.008) → write a
 * file in the home volume → hibernate (stopped, volume kept) → wake (file still there) → stop.
 * Checked red: with WORKER_STACK_TRACES=true, the __stack_trace query answers; with the workflow
 * threads given the process's execArgv plus a --require (the first stack-trace switch), the worker
 * started with V8 flags dies at start.
 */
import { rfbGreeting } from '../agents/docker/driver';
import { sessionWorkflowId } from '../workflows/session-api';
import { commandsInHistory, localActivitiesPerUpdate, patchesInHistory } from './harness/history';
import { replayOnBuiltCode } from './harness/replay';
import { Stack } from './harness/stack';

jest.setTimeout(240_000);

describe('session lifecycle on a real Docker agent', () => {
  const stack = new Stack('lifecycle');
  let admin: string;
  let alice: string;

  beforeAll(async () => {
    await stack.start();
    await stack.startDockerAgent('docker-lifecycle-1', { VNC_PORT_RANGE: '15900-15919' });
    admin = await stack.login();
    const created = await stack.call('POST', '/api/v1/users', { username: 'alice', password: 'alice-password' }, admin);
    expect(created.status).toBe(201);
    alice = await stack.login('alice', 'alice-password');
  });
  afterAll(() => stack.stop());

  test('create → running → hibernate → wake → stop, with the home volume kept throughout', async () => {
    const agents = await stack.call('GET', '/api/v1/agents', undefined, admin);
    expect(agents.status).toBe(200);
    expect(agents.body).toEqual([
      expect.objectContaining({
        agent_id: 'docker-lifecycle-1',
        status: 'online',
        platform: 'docker',
        region: 'local',
        capacity: expect.objectContaining({ max_sessions: 50, current_sessions: 0 }),
        last_heartbeat: expect.any(String),
      }),
    ]);

    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', state: 'running' }, alice);
    expect(created.status).toBe(201);
    expect(created.body).toMatchObject({ user: 'alice', template: 'terminal', platform: 'docker', state: 'pending' });
    const id: string = created.body.id;

    const running = await stack.waitForState(alice, id, 'running');
    expect(running.agent_id).toBe('docker-lifecycle-1');
    // The worker runs workflows without the SDK's per-promise stack traces (a quarter of its CPU:
    // workers/workflow-stack-traces.ts); the Temporal UI's "Stack Trace" query says so.
    await expect(stack.temporal.workflow.getHandle(sessionWorkflowId(id)).query('__stack_trace')).rejects.toThrow(
      /stack traces are not enabled on this worker/,
    );

    const [container] = await stack.containers(id);
    expect(container).toBeDefined();
    expect(container.State).toBe('running');
    expect(container.Labels).toMatchObject({
      'io.streamspace.session-id': id,
      'io.streamspace.user': 'alice',
      'io.streamspace.template': 'terminal',
    });
    const port = Number(container.Labels['io.streamspace.vnc-port']);
    expect(await rfbGreeting({ host: '127.0.0.1', port }, 5000)).toBe('RFB 003.008\n');

    await stack.exec(container.Id, 'echo "kept across hibernate" > "$HOME/marker.txt"');

    const hib = await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, alice);
    expect(hib.status).toBe(200);
    expect(hib.body.state).toBe('hibernated');
    const stopped = await stack.docker.getContainer(container.Id).inspect();
    expect(stopped.State.Running).toBe(false);
    const volume = stopped.Mounts.find((m) => m.Destination === '/config');
    expect(volume?.Name).toBeDefined();
    await expect(stack.docker.getVolume(volume!.Name!).inspect()).resolves.toBeDefined();

    const woke = await stack.call('POST', `/api/v1/sessions/${id}/wake`, undefined, alice);
    expect(woke.status).toBe(200);
    expect(woke.body.state).toBe('running');
    expect(await rfbGreeting({ host: '127.0.0.1', port }, 5000)).toBe('RFB 003.008\n');
    expect(await stack.exec(container.Id, 'cat "$HOME/marker.txt"')).toBe('kept across hibernate\n');

    const del = await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, alice);
    expect(del.status).toBe(200);
    expect(del.body.state).toBe('terminated');
    expect(await stack.containers(id)).toHaveLength(0);
    await expect(stack.docker.getVolume(volume!.Name!).inspect()).resolves.toBeDefined();

    // The database ends consistent: session terminated, every command completed, in order.
    const db = await stack.pool.query('SELECT state FROM sessions WHERE id = $1', [id]);
    expect(db.rows[0].state).toBe('terminated');
    const cmds = await stack.call('GET', `/api/v1/sessions/${id}/commands`, undefined, alice);
    expect(cmds.body.map((c: { command_type: string; status: string }) => `${c.command_type}:${c.status}`)).toEqual([
      'start_session:completed',
      'hibernate_session:completed',
      'wake_session:completed',
      'stop_session:completed',
    ]);
    for (const c of cmds.body) expect(c.sent_at && c.acked_at && c.completed_at).toBeTruthy();

    // The workflow history shows each step, and the workflow is finished.
    const handle = stack.temporal.workflow.getHandle(sessionWorkflowId(id));
    const desc = await handle.describe();
    expect(desc.status.name).toBe('COMPLETED');
    const history = await handle.fetchHistory();
    const activities = (history.events ?? []).map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name).filter(Boolean);
    // Each agent command ran once: on the fast path (quickCommand, a local activity) or as a
    // dispatchCommand activity; placement and state bookkeeping are local activities (markers).
    expect(commandsInHistory(history.events).map((c) => c.type)).toEqual(['start_session', 'hibernate_session', 'wake_session', 'stop_session']);
    // (No other activity: none is needed between commands; on a quick agent there may be none at all.)
    expect(activities.filter((a) => a !== 'dispatchCommand')).toEqual([]);
    const updates = (history.events ?? []).map((e) => e.workflowExecutionUpdateAcceptedEventAttributes?.acceptedRequest?.input?.name).filter(Boolean);
    expect(updates).toEqual(['hibernate', 'wake', 'stop']);
    // One local activity per operation (issue 14): the command's quickCommand also writes what came before it
    // (the wake's quota reservation, the stop's 'terminating'; workflows/session.ts ALL_PATCHES), and the
    // outcome's state is written with the outcome.
    expect(localActivitiesPerUpdate(history.events)).toEqual({ hibernate: 1, wake: 1, stop: 1 });
    expect(desc.memo).toMatchObject({ sessionId: id, user: 'alice', platform: 'docker' });
    // Fewer events and visibility writes per operation (issue 14): one patch marker for all of the
    // workflow's patches, and the state and agent only as search attributes, not again in the memo.
    expect(patchesInHistory(history.events)).toHaveLength(1);
    // (The memo is the one the gateway started the workflow with; the workflow writes it only for an error.)
    const memoWrites = (history.events ?? []).filter((e) => e.workflowPropertiesModifiedEventAttributes);
    expect(memoWrites).toHaveLength(0);
    expect(desc.memo).not.toHaveProperty('state');
    // The state is not a search attribute by default (SESSION_STATE_SEARCH_ATTRIBUTE): no upsert per
    // operation (session-faults.test has it on). The agent the gateway placed the session on as it
    // created it is in the attributes the workflow started with: no upsert for it either.
    const upserts = (history.events ?? []).flatMap((e) => {
      const fields = e.upsertWorkflowSearchAttributesEventAttributes?.searchAttributes?.indexedFields;
      return fields ? [Object.keys(fields).sort()] : [];
    });
    // (TemporalChangeVersion: the one patch marker's own upsert, above.)
    expect(upserts.filter((keys) => !keys.includes('TemporalChangeVersion'))).toEqual([]);
    expect(desc.searchAttributes).toMatchObject({ StreamSpaceAgent: ['docker-lifecycle-1'], StreamSpaceSessionId: [id] });
    expect(desc.searchAttributes).not.toHaveProperty('StreamSpaceState');
    // And the history this code recorded replays on it (test/workflow-replay.test.ts: earlier code's).
    await replayOnBuiltCode(history, sessionWorkflowId(id));
  });

  test('a worker started with V8 flags on its command line runs sessions, without stack traces', async () => {
    // README "Capacity": a larger sticky cache needs a larger heap (--max-old-space-size). Node
    // refuses a worker thread whose execArgv holds V8 flags, so the workflow threads must not be
    // given the process's flags back with anything added (the first stack-trace switch did that,
    // and such a worker died at start). The only worker here is the one with the flags.
    await stack.worker.kill('SIGTERM');
    await stack.startExtraWorker('worker-flags', {}, ['--max-old-space-size=2048', '--max-semi-space-size=16']);
    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice);
    expect(created.status).toBe(201);
    const id: string = created.body.id;
    expect((await stack.waitForState(alice, id, 'running', 90_000)).state).toBe('running');
    await expect(stack.temporal.workflow.getHandle(sessionWorkflowId(id)).query('__stack_trace')).rejects.toThrow(
      /stack traces are not enabled on this worker/,
    );
    const stopped = await stack.call('DELETE', `/api/v1/sessions/${id}?wait=60`, undefined, alice);
    expect(stopped.body.state).toBe('terminated');
  });
});
