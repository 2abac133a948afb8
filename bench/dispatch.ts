/**
 * Command dispatch: from POST /api/v1/sessions being sent to the agent holding the start_session
 * command frame (API → Temporal workflow → placement → command log → NOTIFY → gateway → socket).
 * The agent is a FakeAgent on the real protocol that completes everything at once, so the
 * create → running figure here is pure control-plane overhead.
 *
 * Besides the client-side figures it prints where the time goes: the database's own timeline of
 * each session, and the Temporal history up to the dispatch activity (how many workflow tasks
 * and activities run first, and how long they wait in task queues vs run).
 */
import { temporal } from '@temporalio/proto';
import { sessionWorkflowId } from '../workflows/session-api';
import { createSession, fmtMs, fmtSummary, log, mapLimit, Metric, ms, now, pollState, sleep, Stack, summarize, withStack } from './common';
import { FakeAgent } from './fake-agent';

const NAME = 'dispatch';
const WARMUP = 5;
const SEQUENTIAL = 100;
const CREATORS = 10;
const PER_CREATOR = 10;
const TO_RUNNING = 20;
/** Sessions whose Temporal history is analysed. */
const HISTORIES = 10;

const EventType = temporal.api.enums.v1.EventType;

/** Waits on the database (cheap primary-key reads) so each round starts from a settled state. */
async function dbState(stack: Stack, id: string, state: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await stack.pool.query<{ state: string }>('SELECT state FROM sessions WHERE id = $1', [id]);
    if (r.rows[0]?.state === state) return;
    if (Date.now() > deadline) throw new Error(`session ${id} not ${state} within ${timeoutMs} ms (is ${r.rows[0]?.state})`);
    await sleep(5);
  }
}

/** One create, timed to the command's arrival at the agent; returns [session id, ms]. */
async function timedDispatch(stack: Stack, agent: FakeAgent, token: string): Promise<[string, number]> {
  const t0 = now();
  const id = await createSession(stack, token);
  const arrived = await agent.commandArrival(id);
  await dbState(stack, id, 'running');
  return [id, ms(t0, arrived)];
}

/**
 * The database's clock: session row inserted (during the POST) → command row inserted (workflow
 * started, session placed, dispatch activity running) → sent on the socket (gateway) → completed
 * by the agent → session row says running (workflow again).
 */
async function dbTimeline(stack: Stack, ids: string[]): Promise<string> {
  const r = await stack.pool.query<Record<'to_command' | 'to_sent' | 'to_completed' | 'to_running', number>>(
    `SELECT EXTRACT(EPOCH FROM c.created_at - s.created_at) * 1000 AS to_command,
            EXTRACT(EPOCH FROM c.sent_at - c.created_at) * 1000 AS to_sent,
            EXTRACT(EPOCH FROM c.completed_at - c.sent_at) * 1000 AS to_completed,
            EXTRACT(EPOCH FROM s.updated_at - c.completed_at) * 1000 AS to_running
       FROM sessions s JOIN agent_commands c ON c.session_id = s.id AND c.command_type = 'start_session'
      WHERE s.id = ANY($1::text[]) AND s.state = 'running'`,
    [ids],
  );
  const p50 = (k: keyof (typeof r.rows)[number]) => fmtMs(summarize(r.rows.map((row) => Number(row[k]))).p50);
  return `p50 session row → command row ${p50('to_command')}, → sent ${p50('to_sent')}, → completed ${p50('to_completed')}, → session running ${p50('to_running')} (n=${r.rowCount})`;
}

/** Temporal's clock: from workflow start to the dispatchCommand activity starting. */
async function temporalTimeline(stack: Stack, ids: string[]): Promise<string> {
  const total: number[] = [];
  const queued: number[] = [];
  const running: number[] = [];
  let tasks = '';
  for (const id of ids) {
    const history = await stack.temporal.workflow.getHandle(sessionWorkflowId(id)).fetchHistory();
    const at = new Map<number, number>();
    let t0 = NaN;
    let wait = 0;
    let exec = 0;
    let wfTasks = 0;
    let activities = 0;
    let dispatchScheduled = -1;
    for (const e of history.events ?? []) {
      const eventId = Number(e.eventId);
      const t = Number(e.eventTime?.seconds ?? 0) * 1000 + (e.eventTime?.nanos ?? 0) / 1e6;
      at.set(eventId, t);
      if (Number.isNaN(t0)) t0 = t;
      switch (e.eventType) {
        case EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
          wfTasks++;
          wait += t - at.get(Number(e.workflowTaskStartedEventAttributes?.scheduledEventId))!;
          break;
        case EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
          exec += t - at.get(Number(e.workflowTaskCompletedEventAttributes?.startedEventId))!;
          break;
        case EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
          if (e.activityTaskScheduledEventAttributes?.activityType?.name === 'dispatchCommand') dispatchScheduled = eventId;
          break;
        case EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
          activities++;
          wait += t - at.get(Number(e.activityTaskStartedEventAttributes?.scheduledEventId))!;
          break;
        case EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
          exec += t - at.get(Number(e.activityTaskCompletedEventAttributes?.startedEventId))!;
          break;
      }
      if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED && Number(e.activityTaskStartedEventAttributes?.scheduledEventId) === dispatchScheduled) {
        total.push(t - t0);
        queued.push(wait);
        running.push(exec);
        tasks = `${wfTasks} workflow tasks + ${activities} activities`;
        break;
      }
    }
  }
  return `workflow start → dispatchCommand running: p50 ${fmtMs(summarize(total).p50)} over ${tasks}; of which waiting in task queues ${fmtMs(summarize(queued).p50)}, between task start and completion ${fmtMs(summarize(running).p50)} (n=${total.length})`;
}

export async function dispatchBench(): Promise<Metric[]> {
  return withStack(`bench-${NAME}`, {}, async (stack) => {
    const agentId = 'bench-fake-agent';
    const agent = new FakeAgent(agentId, `ws://127.0.0.1:${stack.agentPort}`, stack.agentToken(agentId));
    const ids: string[] = [];
    try {
      await agent.connect();
      const token = await stack.login();

      // Warm-up (JIT, connection pools, Temporal worker caches): not counted.
      for (let i = 0; i < WARMUP; i++) ids.push((await timedDispatch(stack, agent, token))[0]);

      const sequential: number[] = [];
      const seqIds: string[] = [];
      for (let i = 0; i < SEQUENTIAL; i++) {
        const [id, t] = await timedDispatch(stack, agent, token);
        seqIds.push(id);
        sequential.push(t);
      }
      ids.push(...seqIds);
      const seq = summarize(sequential);
      log(NAME, `dispatch, sequential:      ${fmtSummary(seq)}`);
      log(NAME, `  database:  ${await dbTimeline(stack, seqIds)}`);
      log(NAME, `  temporal:  ${await temporalTimeline(stack, seqIds.slice(-HISTORIES))}`);

      const concurrent: number[] = [];
      const t0 = now();
      await mapLimit(
        Array.from({ length: CREATORS }, (_, i) => i),
        CREATORS,
        async () => {
          for (let i = 0; i < PER_CREATOR; i++) {
            const [id, t] = await timedDispatch(stack, agent, token);
            ids.push(id);
            concurrent.push(t);
          }
        },
      );
      const conc = summarize(concurrent);
      const rate = (CREATORS * PER_CREATOR) / (ms(t0) / 1000);
      log(NAME, `dispatch, ${CREATORS} concurrent:   ${fmtSummary(conc)}  (${rate.toFixed(1)} sessions/s to running)`);

      // create → running as a client sees it: GET polling every 20 ms.
      const toRunning: number[] = [];
      for (let i = 0; i < TO_RUNNING; i++) {
        const t = now();
        const id = await createSession(stack, token);
        ids.push(id);
        await pollState(stack, token, id, 'running', 20);
        toRunning.push(ms(t));
      }
      const run = summarize(toRunning);
      log(NAME, `create → running (instant agent, GET every 20 ms): ${fmtSummary(run)}`);
      log(NAME, `agent received ${agent.commandsReceived} command frames for ${ids.length} sessions`);

      // Terminate the workflows directly: stopping some 225 sessions through the API would take
      // longer than the measurements, and the database is dropped with the Stack anyway.
      await mapLimit(ids, 10, (id) =>
        stack.temporal.workflow
          .getHandle(sessionWorkflowId(id))
          .terminate('bench done')
          .catch(() => undefined),
      );

      return [
        {
          metric: 'command dispatch, API call → agent has it (sequential)',
          ours: `p50 ${fmtMs(seq.p50)}, p95 ${fmtMs(seq.p95)}, max ${fmtMs(seq.max)} (n=${seq.n})`,
          target: 'p50 < 50 ms',
          peer: '—',
        },
        {
          metric: `command dispatch, ${CREATORS} concurrent creators`,
          ours: `p50 ${fmtMs(conc.p50)}, p95 ${fmtMs(conc.p95)}, max ${fmtMs(conc.max)} (n=${conc.n}); ${rate.toFixed(1)} sessions/s`,
          target: 'p50 < 50 ms',
          peer: '—',
        },
        {
          metric: 'create → running, instant agent (control-plane overhead)',
          ours: `p50 ${fmtMs(run.p50)}, p95 ${fmtMs(run.p95)} (n=${run.n})`,
          target: '—',
          peer: '—',
        },
      ];
    } finally {
      agent.close();
    }
  });
}
