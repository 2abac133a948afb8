/**
 * Issue 13 item 2, the long timeouts: the session workflow's idle and duration timers (runbook
 * step 5 of workflows/session.ts) with their real defaults, 30 min idle and 8 h maximum, on
 * Temporal's time-skipping test server. test/idle.test.ts covers the same code with 5–10 s limits
 * on a real container; this one proves the default durations, input moving the idle deadline, and
 * the 8 h stop, in a few seconds of wall time.
 *
 * The real worker (dist/workers/main.js: the bundled workflow, its activities and local
 * activities) runs as a child process against the test server; the gateway and a fake agent
 * (test/harness/stack.ts) execute the commands the workflow sends, through agent_commands as in
 * production. The test starts the session workflow itself, as the gateway's POST /sessions does.
 *
 * The test server comes from scripts/build-temporal-test-server.sh (provision.sh test mode);
 * TEMPORAL_TEST_SERVER overrides its path. Without it the test fails, never skips.
 *
 * One clock: the workflow times the session from when it became running on its own clock
 * (workflow time, here the test server's skipped clock); the input the gateway records
 * (last_activity) is written below at workflow time, as the gateway writes it at wall time.
 */
import { commandsInHistory } from './harness/history';
import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { TestWorkflowEnvironment } from '@temporalio/testing';
import type { WorkflowHandle } from '@temporalio/client';
import { SA } from '../workflows/search-attributes';
import {
  lifetimeChangedSignal,
  SESSION_WORKFLOW_TYPE,
  sessionWorkflowId,
  type SessionStatus,
  type SessionWorkflowInput,
  statusQuery,
  wakeUpdate,
} from '../workflows/session-api';
import { freePort, Proc, Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

const TEST_SERVER = process.env.TEMPORAL_TEST_SERVER || '/var/cache/streamspace/bin/temporal-test-server';
const TEST_SERVER_LIB = process.env.TEMPORAL_TEST_SERVER_LIB || '/var/cache/streamspace/temporal-test-server/lib';
const MIN = 60_000;
const HOUR = 60 * MIN;

describe('session idle and duration timers on a time-skipping Temporal server', () => {
  const stack = new Stack('session-timers');
  let env: TestWorkflowEnvironment;
  let port = 0;
  let worker: Proc;

  beforeAll(async () => {
    if (!existsSync(TEST_SERVER))
      throw new Error(
        `Temporal's time-skipping test server is missing at ${TEST_SERVER}: run scripts/provision.sh test (or scripts/build-temporal-test-server.sh)`,
      );
    // The SDK gives the server 5 s to listen; a JVM on a loaded 2-core machine can take longer
    // the first time (jars not yet in the page cache): read them once, and try up to 3 times.
    for (const jar of readdirSync(TEST_SERVER_LIB)) readFileSync(path.join(TEST_SERVER_LIB, jar));
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      try {
        env = await TestWorkflowEnvironment.createTimeSkipping({ server: { executable: { type: 'existing-path', path: TEST_SERVER }, port } });
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
        console.log(`time-skipping server did not start (attempt ${attempt}): ${(err as Error).message.split(':')[0]}; again`);
      }
    }
    await stack.start({ worker: false });
    // The test server refuses unregistered search attributes and has no ListSearchAttributes:
    // the worker's start-up registration (workers/search-attributes.ts) adds them all.
    // The worker process of production, on the test server.
    worker = new Proc(
      'worker',
      'workers/main.js',
      { ...stack.commonEnv, TEMPORAL_ADDRESS: `127.0.0.1:${port}`, WORKER_METRICS_PORT: '0' },
      stack.logDir,
    ).start();
    stack.worker = worker; // stopped by stack.stop()
    await worker.waitForLog(/Worker started/, 90_000);
    await stack.startFakeAgent('fake-timers-1');
  });

  afterAll(async () => {
    await stack.stop();
    await env?.teardown();
  });

  /** Workflow time now (the test server's clock, ms). */
  const now = () => env.currentTimeMs();
  /** Skips workflow time (timers fire, their activities run against the fake agent). */
  async function skip(ms: number): Promise<void> {
    await env.sleep(ms);
  }

  async function row(id: string) {
    const r = await stack.pool.query<{ state: string; running_since: Date | null; last_activity: Date | null }>(
      'SELECT state, running_since, last_activity FROM sessions WHERE id = $1',
      [id],
    );
    return r.rows[0];
  }

  /** Waits (wall time) until the workflow's status matches, or fails with the last one seen. */
  async function until(h: WorkflowHandle, what: string, ok: (s: SessionStatus) => boolean, timeoutMs = 30_000): Promise<SessionStatus> {
    let last: SessionStatus | undefined;
    try {
      return await waitFor(
        what,
        async () => {
          last = await h.query(statusQuery);
          return ok(last) ? last : undefined;
        },
        timeoutMs,
        100,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}; last status: ${JSON.stringify(last)}`);
    }
  }

  /** Waits until the session's n-th command of a type has completed on the fake agent. */
  async function commandCompleted(id: string, type: string, n: number): Promise<void> {
    await waitFor(
      `${type} #${n} of ${id} to complete`,
      async () => {
        const r = await stack.pool.query(`SELECT count(*)::int AS n FROM agent_commands WHERE session_id = $1 AND command_type = $2 AND status = 'completed'`, [
          id,
          type,
        ]);
        return r.rows[0].n >= n;
      },
      30_000,
    );
  }

  /** Every command the workflow sent, with the workflow time it was sent (from its history). */
  async function commandsSent(h: WorkflowHandle): Promise<Array<{ type: string; at: number }>> {
    return commandsInHistory((await h.fetchHistory()).events).map(({ type, at }) => ({ type, at }));
  }

  test('30 min without input hibernates; input moves the deadline; 8 h stops the session', async () => {
    const id = randomUUID();
    const admin = await stack.pool.query<{ id: string }>(`SELECT id::text AS id FROM users WHERE username = 'admin'`);
    expect(admin.rowCount).toBe(1);
    // The row as POST /api/v1/sessions writes it (api/routes/sessions.ts); workflow_confirmed
    // NULL keeps the gateway's reaper (which talks to the other Temporal server) away from it.
    await stack.pool.query(
      `INSERT INTO sessions (id, user_id, template_name, state, platform, tags, persistent_home, workflow_id, namespace, workflow_confirmed, idle_timeout, max_session_duration)
       VALUES ($1, $2, 'terminal', 'pending', 'docker', '[]', true, $3, NULL, NULL, '30m', '8h')`,
      [id, admin.rows[0].id, sessionWorkflowId(id)],
    );
    // As activities/session-adoption.ts startSessionWorkflow does for a new session.
    const input: SessionWorkflowInput = {
      sessionId: id,
      user: 'admin',
      template: 'terminal',
      platform: 'docker',
      startTimeoutMs: 5 * MIN,
      maxHistoryEvents: 2000,
    };
    const h = await env.client.workflow.start(SESSION_WORKFLOW_TYPE, {
      workflowId: sessionWorkflowId(id),
      taskQueue: stack.taskQueue,
      args: [input],
      memo: { sessionId: id, user: 'admin', template: 'terminal', platform: 'docker', state: 'pending' },
      typedSearchAttributes: [
        { key: SA.sessionId, value: id },
        { key: SA.user, value: 'admin' },
        { key: SA.platform, value: 'docker' },
        { key: SA.state, value: 'pending' },
      ],
    });
    const started = await until(h, 'the session to run', (s) => s.state === 'running' && s.stopsAt != null, 60_000);
    // The workflow times the session on its own clock from when it became running (stopsAt − 8 h);
    // the row's running_since (the database's clock) agrees to within a second.
    const t0 = started.stopsAt! - 8 * HOUR;
    expect(Math.abs(t0 - (await row(id)).running_since!.getTime())).toBeLessThan(1000);
    const at = (ms: number) => `${((ms - t0) / MIN).toFixed(2)} min`;
    const atH = (ms: number) => `${((ms - t0) / HOUR).toFixed(3)} h`;
    expect(Math.abs(t0 - (await now()))).toBeLessThan(30_000);
    expect(started.hibernatesAt).toBe(t0 + 30 * MIN);
    expect(started.stopsAt).toBe(t0 + 8 * HOUR);
    expect(started.lastAutomaticAction).toBeNull();
    const timeline: string[] = [`running at 0 (running_since ${new Date(t0).toISOString()}, workflow time)`];

    // 1. No input: running at 29 min, hibernated by 31 min (at 30).
    await skip(29 * MIN);
    const at29 = await h.query(statusQuery);
    expect(at29).toMatchObject({ state: 'running', hibernatesAt: t0 + 30 * MIN, stopsAt: t0 + 8 * HOUR, lastAutomaticAction: null });
    timeline.push(`${at(await now())}: running, hibernatesAt ${at(at29.hibernatesAt!)}`);
    await skip(2 * MIN);
    const idle = await until(h, 'idle hibernation', (s) => s.state === 'hibernated');
    await commandCompleted(id, 'hibernate_session', 1);
    expect(idle.lastAutomaticAction).toBe('hibernated: no keyboard or mouse input for 30 min');
    expect(idle).toMatchObject({ hibernatesAt: null, stopsAt: null, lastError: null });
    expect((await row(id)).state).toBe('hibernated');
    let sent = await commandsSent(h);
    const hibernate1 = sent.filter((c) => c.type === 'hibernate_session')[0].at;
    expect(hibernate1).toBeGreaterThanOrEqual(t0 + 30 * MIN);
    expect(hibernate1).toBeLessThan(t0 + 31 * MIN);
    timeline.push(`${at(hibernate1)}: hibernate_session sent (${idle.lastAutomaticAction})`);

    // 2. Input keeps it alive: woken, typed into 20 min later, still running 35 min after the
    //    wake (deadline moved to 50 min), hibernated once 30 min pass after the input.
    await h.executeUpdate(wakeUpdate);
    const afterWake = await until(h, 'the timers planned after the wake', (s) => s.state === 'running' && s.stopsAt != null);
    const woke = afterWake.stopsAt! - 8 * HOUR; // when it became running, on the workflow's clock
    expect(Math.abs(woke - (await now()))).toBeLessThan(30_000);
    expect((await row(id)).running_since).not.toBeNull();
    expect(afterWake).toMatchObject({ state: 'running', hibernatesAt: woke + 30 * MIN });
    timeline.push(`${at(woke)}: woken, hibernatesAt ${at(afterWake.hibernatesAt!)}`);
    await skip(20 * MIN);
    const inputAt = await now();
    // What the gateway's InputTracker.flush (api/sessions/input-tracker.ts) writes for a key
    // press seen at inputAt on the session's VNC tunnel.
    await stack.pool.query(
      `UPDATE sessions s SET last_activity = to_timestamp(v.t / 1000.0) AT TIME ZONE current_setting('TimeZone')
         FROM unnest($1::text[], $2::float8[]) AS v(id, t)
        WHERE s.id = v.id AND (s.last_activity IS NULL OR s.last_activity < to_timestamp(v.t / 1000.0) AT TIME ZONE current_setting('TimeZone'))`,
      [[id], [inputAt]],
    );
    expect(Math.abs((await row(id)).last_activity!.getTime() - inputAt)).toBeLessThan(1);
    timeline.push(`${at(inputAt)}: keyboard input recorded (${((inputAt - woke) / MIN).toFixed(2)} min after the wake)`);
    await skip(15 * MIN); // 35 min after the wake; the 30 min timer fired, re-read the row, re-armed
    const at35 = await h.query(statusQuery);
    expect(at35.state).toBe('running');
    expect(at35.hibernatesAt).toBe(Math.floor(inputAt) + 30 * MIN);
    expect(Math.abs(at35.hibernatesAt! - (woke + 50 * MIN))).toBeLessThan(30_000);
    expect(at35.lastAutomaticAction).toBe(idle.lastAutomaticAction); // nothing new happened
    timeline.push(
      `${at(await now())}: still running (${(((await now()) - woke) / MIN).toFixed(2)} min after the wake), hibernatesAt ${at(at35.hibernatesAt!)}`,
    );
    await skip(16 * MIN); // 51 min after the wake
    const idle2 = await until(h, 'idle hibernation after the input', (s) => s.state === 'hibernated');
    await commandCompleted(id, 'hibernate_session', 2);
    expect(idle2.lastAutomaticAction).toBe('hibernated: no keyboard or mouse input for 30 min');
    sent = await commandsSent(h);
    const hibernate2 = sent.filter((c) => c.type === 'hibernate_session')[1].at;
    expect(hibernate2).toBeGreaterThanOrEqual(inputAt + 30 * MIN - 1);
    expect(hibernate2).toBeLessThan(inputAt + 31 * MIN);
    timeline.push(
      `${at(hibernate2)}: hibernate_session sent, ${((hibernate2 - woke) / MIN).toFixed(2)} min after the wake, ${((hibernate2 - inputAt) / MIN).toFixed(2)} min after the input`,
    );

    // 3. The maximum duration: woken, idle hibernation off (PATCH-like: row + signal), running at
    //    7 h 59 min, stopped by 8 h 1 min, and the status says why.
    await h.executeUpdate(wakeUpdate);
    const woke3 = (await until(h, 'the timers planned after the wake', (s) => s.state === 'running' && s.stopsAt != null)).stopsAt! - 8 * HOUR;
    await stack.pool.query(`UPDATE sessions SET idle_timeout = '0' WHERE id = $1`, [id]);
    await h.signal(lifetimeChangedSignal);
    const noIdle = await until(h, 'the timers re-planned without idle hibernation', (s) => s.state === 'running' && s.hibernatesAt === null);
    expect(noIdle.stopsAt).toBe(woke3 + 8 * HOUR);
    timeline.push(`${atH(woke3)}: woken, idle_timeout '0', stopsAt ${atH(noIdle.stopsAt!)}`);
    await skip(7 * HOUR + 59 * MIN);
    const late = await h.query(statusQuery);
    expect(late).toMatchObject({ state: 'running', hibernatesAt: null, stopsAt: woke3 + 8 * HOUR });
    timeline.push(`${atH(await now())}: running ${(((await now()) - woke3) / HOUR).toFixed(3)} h after the wake`);
    await skip(2 * MIN);
    const final = await h.result();
    expect(final.state).toBe('terminated');
    expect(final.lastAutomaticAction).toBe('stopped: it ran for its maximum session duration (480 min)');
    await commandCompleted(id, 'stop_session', 1);
    expect((await row(id)).state).toBe('terminated');
    sent = await commandsSent(h);
    const stopAt = sent.filter((c) => c.type === 'stop_session')[0].at;
    expect(stopAt).toBeGreaterThanOrEqual(woke3 + 8 * HOUR);
    expect(stopAt).toBeLessThan(woke3 + 8 * HOUR + MIN);
    timeline.push(`${atH(stopAt)}: stop_session sent, ${((stopAt - woke3) / HOUR).toFixed(4)} h after the wake (${final.lastAutomaticAction})`);

    // Every command, in order: nothing extra (no early hibernation, no retries of the timers).
    expect(sent.map((c) => c.type)).toEqual(['start_session', 'hibernate_session', 'wake_session', 'hibernate_session', 'wake_session', 'stop_session']);
    console.log(
      `session timers in workflow time (t0 = running at ${new Date(t0).toISOString()}):\n  ${timeline.join('\n  ')}\n` +
        `  commands: ${sent.map((c) => `${c.type}@${at(c.at)}`).join(', ')}`,
    );
  });
});
