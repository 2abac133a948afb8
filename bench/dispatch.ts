/**
 * Command dispatch: from POST /api/v1/sessions being sent to the agent holding the start_session
 * command frame (API → Temporal workflow → placement → command log → NOTIFY → gateway → socket).
 * The agent is a FakeAgent on the real protocol that completes everything at once, so the
 * create → running figure here is pure control-plane overhead. The 10 concurrent creators are 10
 * users (one person's creates queue on their quota lock, by design). Then lifecycle throughput:
 * hibernate/wake calls from 20 concurrent clients on running sessions, and stops.
 *
 * Before and after in one run (issue 14): two stacks side by side, one whose worker runs the
 * dispatch path as it was (STREAMSPACE_BENCH_LEGACY_DISPATCH=true, set only here: placement and
 * the command in separate steps, the command issued by the dispatch activity after the workflow
 * task; an INSERT, a NOTIFY and a read per command, the quota release as its own statement),
 * measured alternately so the machine's noise hits both alike.
 *
 * Besides the client-side figures it prints where the time goes: the database's own timeline of
 * each session, and the Temporal history up to the dispatch activity (how many workflow tasks
 * and activities run first, and how long they wait in task queues vs run).
 */
import { temporal } from '@temporalio/proto';
import { sessionWorkflowId } from '../workflows/session-api';
import { createSession, fmtMs, fmtSummary, log, mapLimit, Metric, ms, now, pollState, sleep, Stack, summarize, withStack } from './common';
import { FakeAgent } from './fake-agent';
import { cpuSeconds, machineBusySeconds } from './procstat';

const NAME = 'dispatch';
const WARMUP = 5;
/** Per variant, in alternating blocks. */
const SEQUENTIAL = 60;
const BLOCK = 10;
const CREATORS = 10;
/** Per creator and round; two rounds per variant, alternating. */
const PER_CREATOR = 5;
const ROUNDS = 2;
const TO_RUNNING = 10;
/** Lifecycle load: this many clients, each hibernating and waking its own session. */
const LIFECYCLE_CLIENTS = 20;
const LIFECYCLE_MS = 6000;
/** Sessions whose Temporal history is analysed. */
const HISTORIES = 10;

const EventType = temporal.api.enums.v1.EventType;

/** Waits on the database (primary-key reads every 20 ms) so each round starts from a settled state. */
async function dbState(stack: Stack, id: string, state: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await stack.pool.query<{ state: string }>('SELECT state FROM sessions WHERE id = $1', [id]);
    if (r.rows[0]?.state === state) return;
    if (Date.now() > deadline) throw new Error(`session ${id} not ${state} within ${timeoutMs} ms (is ${r.rows[0]?.state})`);
    // (Was 5 ms: ten creators polling made some 2000 queries/s, load of the bench's own.)
    await sleep(20);
  }
}

/** Wall-clock (epoch ms) of each create's POST and of its command's arrival, for dbTimeline. */
const walls = new Map<string, { post: number; arrived: number }>();

/** One create, timed to the command's arrival at the agent; returns [session id, ms]. */
async function timedDispatch(stack: Stack, agent: FakeAgent, token: string): Promise<[string, number]> {
  const wall0 = performance.timeOrigin + performance.now();
  const t0 = now();
  const id = await createSession(stack, token);
  const arrived = await agent.commandArrival(id);
  walls.set(id, { post: wall0, arrived: wall0 + ms(t0, arrived) });
  await dbState(stack, id, 'running');
  return [id, ms(t0, arrived)];
}

/**
 * The database's clock: session row inserted (during the POST) → command row inserted (workflow
 * started, session placed, dispatch activity running) → sent on the socket (gateway) → completed
 * by the agent → session row says running (workflow again).
 */
async function dbTimeline(stack: Stack, ids: string[]): Promise<string> {
  const r = await stack.pool.query<Record<'to_command' | 'to_sent' | 'to_completed' | 'to_running' | 'created' | 'sent', number> & { id: string }>(
    `SELECT s.id, EXTRACT(EPOCH FROM s.created_at) * 1000 AS created, EXTRACT(EPOCH FROM c.sent_at) * 1000 AS sent,
            EXTRACT(EPOCH FROM c.created_at - s.created_at) * 1000 AS to_command,
            EXTRACT(EPOCH FROM c.sent_at - c.created_at) * 1000 AS to_sent,
            EXTRACT(EPOCH FROM c.completed_at - c.sent_at) * 1000 AS to_completed,
            EXTRACT(EPOCH FROM s.updated_at - c.completed_at) * 1000 AS to_running
       FROM sessions s JOIN agent_commands c ON c.session_id = s.id AND c.command_type = 'start_session'
      WHERE s.id = ANY($1::text[]) AND s.state = 'running'`,
    [ids],
  );
  const p50 = (k: keyof (typeof r.rows)[number]) => fmtMs(summarize(r.rows.map((row) => Number(row[k]))).p50);
  // The same machine's clock on both sides: POST sent → the session row's transaction began, and
  // sent (claimed by the gateway) → the agent read the frame.
  const known = r.rows.filter((row) => walls.has(row.id));
  const wall = (f: (w: { post: number; arrived: number }, row: (typeof r.rows)[number]) => number) =>
    fmtMs(summarize(known.map((row) => f(walls.get(row.id)!, row))).p50);
  return `p50 POST → session row ${wall((w, row) => Number(row.created) - w.post)}, session row → command row ${p50('to_command')}, → sent ${p50('to_sent')}, → completed ${p50('to_completed')}, → session running ${p50('to_running')}; sent → agent has it ${wall((w, row) => w.arrived - Number(row.sent))} (n=${r.rowCount})`;
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
    let markers = 0;
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
        case EventType.EVENT_TYPE_MARKER_RECORDED:
          if (e.markerRecordedEventAttributes?.markerName === 'core_local_activity') markers++;
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
        tasks = `${wfTasks} workflow task(s) (${markers} local activities) + ${activities} activity`;
        break;
      }
    }
  }
  return `workflow start → dispatchCommand running: p50 ${fmtMs(summarize(total).p50)} over ${tasks}; of which waiting in task queues ${fmtMs(summarize(queued).p50)}, between task start and completion ${fmtMs(summarize(running).p50)} (n=${total.length})`;
}

/** Nearest-rank percentile (common.ts's summary stops at p95). */
function p99(samples: number[]): number {
  const s = [...samples].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil(0.99 * s.length) - 1)] : NaN;
}
const fmtP = (xs: number[]): string => `p50 ${fmtMs(summarize(xs).p50)}, p99 ${fmtMs(p99(xs))}`;

/** Temporal round trips per lifecycle operation: workflow tasks, activities and local activities per completed Update. */
async function updateRoundTrips(stack: Stack, ids: string[]): Promise<string> {
  let updates = 0;
  let wfTasks = 0;
  let activities = 0;
  let markers = 0;
  for (const id of ids) {
    const history = await stack.temporal.workflow.getHandle(sessionWorkflowId(id)).fetchHistory();
    let counting = false;
    for (const e of history.events ?? []) {
      if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED) counting = true;
      if (!counting) continue;
      if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED) updates++;
      else if (e.eventType === EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED) wfTasks++;
      else if (e.eventType === EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED) activities++;
      else if (e.eventType === EventType.EVENT_TYPE_MARKER_RECORDED && e.markerRecordedEventAttributes?.markerName === 'core_local_activity') markers++;
    }
  }
  const per = (n: number) => (updates ? (n / updates).toFixed(2) : 'n/a');
  return `per hibernate/wake: ${per(wfTasks)} workflow tasks, ${per(activities)} activities, ${per(markers)} local activities (n=${updates} updates)`;
}

/** Committed transactions in the stack's database so far (each statement outside BEGIN/COMMIT is one). */
async function commits(stack: Stack): Promise<number> {
  const r = await stack.pool.query<{ n: string }>('SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()');
  return Number(r.rows[0].n);
}

interface Variant {
  name: 'before' | 'after';
  stack: Stack;
  agent: FakeAgent;
  token: string;
  /** One user per concurrent creator (as in the scale bench): ten people creating at once, not one person ten times. */
  creators: string[];
  ids: string[];
  sequential: number[];
  seqIds: string[];
  concurrent: number[];
  concurrentMs: number;
  concurrentCpu: number;
  concurrentCommits: number;
  lifecycle: number[];
  lifecycleOps: number;
  lifecycleMs: number;
  lifecycleCpu: number;
  lifecycleCommits: number;
  lifecycleIds: string[];
  stops: number[];
}

async function variant(name: Variant['name'], stack: Stack): Promise<Variant> {
  const agentId = `bench-fake-agent-${name}`;
  const agent = new FakeAgent(agentId, `ws://127.0.0.1:${stack.agentPort}`, stack.agentToken(agentId));
  await agent.connect();
  const token = await stack.login();
  const creators: string[] = [];
  for (let i = 0; i < CREATORS; i++) {
    const username = `dispatch-creator-${i}`;
    const c = await stack.call('POST', '/api/v1/users', { username, password: 'dispatch-password-1' }, token);
    if (c.status !== 201 && c.status !== 200) throw new Error(`create user ${username}: ${c.status} ${JSON.stringify(c.body)}`);
    creators.push(await stack.login(username, 'dispatch-password-1'));
  }
  return {
    name,
    stack,
    agent,
    token,
    creators,
    ids: [],
    sequential: [],
    seqIds: [],
    concurrent: [],
    concurrentMs: 0,
    concurrentCpu: 0,
    concurrentCommits: 0,
    lifecycle: [],
    lifecycleOps: 0,
    lifecycleMs: 0,
    lifecycleCpu: 0,
    lifecycleCommits: 0,
    lifecycleIds: [],
    stops: [],
  };
}

/** CPU seconds a process has used so far; 0 once it is gone (or never started). */
function cpuSecondsOr0(pid: number | undefined): number {
  const c = pid === undefined ? NaN : cpuSeconds(pid);
  return Number.isNaN(c) ? 0 : c;
}

/** CPU of the variant's gateway and worker from now on: cpu() says how much since. */
function stackProcs(v: Variant): { cpu(): number; stop(): void } {
  const read = () => cpuSecondsOr0(v.stack.api.child?.pid) + cpuSecondsOr0(v.stack.worker.child?.pid);
  const base = read();
  return { cpu: () => read() - base, stop: () => undefined };
}

/** 20 clients, each hibernating then waking its own running session, for LIFECYCLE_MS; counts calls that ended in the target state. */
async function lifecycleRound(v: Variant): Promise<void> {
  const procs = stackProcs(v);
  const commits0 = await commits(v.stack);
  const t0 = now();
  const end = Date.now() + LIFECYCLE_MS;
  await Promise.all(
    v.lifecycleIds.map(async (id) => {
      while (Date.now() < end) {
        for (const [op, want] of [
          ['hibernate', 'hibernated'],
          ['wake', 'running'],
        ] as const) {
          const t = now();
          const r = await v.stack.call<{ state: string }>('POST', `/api/v1/sessions/${id}/${op}?wait=30`, undefined, v.token);
          if (r.status !== 200 || r.body.state !== want) throw new Error(`${v.name}: ${op} ${id}: ${r.status} ${JSON.stringify(r.body)}`);
          v.lifecycle.push(ms(t));
          v.lifecycleOps++;
        }
      }
    }),
  );
  v.lifecycleMs += ms(t0);
  v.lifecycleCpu += procs.cpu();
  procs.stop();
  v.lifecycleCommits += (await commits(v.stack)) - commits0;
}

export async function dispatchBench(): Promise<Metric[]> {
  return withStack(`bench-${NAME}-before`, { STREAMSPACE_BENCH_LEGACY_DISPATCH: 'true', SESSION_ISSUE_START_ON_CREATE: 'false' }, (before) =>
    withStack(`bench-${NAME}`, {}, async (after) => {
      const vs = [await variant('before', before), await variant('after', after)];
      try {
        // Warm-up (JIT, connection pools, Temporal worker caches): not counted.
        for (const v of vs) for (let i = 0; i < WARMUP; i++) v.ids.push((await timedDispatch(v.stack, v.agent, v.token))[0]);

        // Sequential, in alternating blocks.
        for (let b = 0; b < SEQUENTIAL / BLOCK; b++)
          for (const v of b % 2 ? [...vs].reverse() : vs)
            for (let i = 0; i < BLOCK; i++) {
              const [id, t] = await timedDispatch(v.stack, v.agent, v.token);
              v.seqIds.push(id);
              v.sequential.push(t);
            }
        for (const v of vs) {
          v.ids.push(...v.seqIds);
          log(NAME, `[${v.name}] dispatch, sequential:  ${fmtSummary(summarize(v.sequential))}, p99 ${fmtMs(p99(v.sequential))}`);
          log(NAME, `[${v.name}]   database:  ${await dbTimeline(v.stack, v.seqIds)}`);
          log(NAME, `[${v.name}]   temporal:  ${await temporalTimeline(v.stack, v.seqIds.slice(-HISTORIES))}`);
        }

        // 10 concurrent creators, alternating rounds.
        for (let r = 0; r < ROUNDS; r++)
          for (const v of r % 2 ? [...vs].reverse() : vs) {
            const t0 = now();
            const procs = stackProcs(v);
            const commits0 = await commits(v.stack);
            await mapLimit(
              Array.from({ length: CREATORS }, (_, i) => i),
              CREATORS,
              async (c) => {
                for (let i = 0; i < PER_CREATOR; i++) {
                  const [id, t] = await timedDispatch(v.stack, v.agent, v.creators[c]);
                  v.ids.push(id);
                  v.concurrent.push(t);
                }
              },
            );
            v.concurrentMs += ms(t0);
            v.concurrentCpu += procs.cpu();
            procs.stop();
            v.concurrentCommits += (await commits(v.stack)) - commits0;
          }
        for (const v of vs) {
          const rate = v.concurrent.length / (v.concurrentMs / 1000);
          log(
            NAME,
            `[${v.name}] dispatch, ${CREATORS} concurrent: ${fmtSummary(summarize(v.concurrent))}, p99 ${fmtMs(p99(v.concurrent))}  (${rate.toFixed(1)} sessions/s to running)`,
          );
          const n = v.concurrent.length;
          log(NAME, `[${v.name}]   database:  ${await dbTimeline(v.stack, v.concurrent.length ? v.ids.slice(-v.concurrent.length) : [])}`);
          log(
            NAME,
            `[${v.name}]   per session created (to running): gateway+worker CPU ${((v.concurrentCpu / n) * 1000).toFixed(1)} ms, ${(v.concurrentCommits / n).toFixed(1)} SQL transactions (incl. the bench's own polling)`,
          );
        }

        // create → running as a client sees it: GET polling every 20 ms.
        for (const v of vs) {
          const toRunning: number[] = [];
          for (let i = 0; i < TO_RUNNING; i++) {
            const t = now();
            const id = await createSession(v.stack, v.token);
            v.ids.push(id);
            await pollState(v.stack, v.token, id, 'running', 20);
            toRunning.push(ms(t));
          }
          log(NAME, `[${v.name}] create → running (instant agent, GET every 20 ms): ${fmtSummary(summarize(toRunning))}`);
        }

        // Lifecycle throughput: alternating rounds of hibernate/wake from 20 clients.
        for (const v of vs) v.lifecycleIds = v.ids.slice(-LIFECYCLE_CLIENTS);
        const busy0 = machineBusySeconds();
        for (let r = 0; r < ROUNDS; r++) for (const v of r % 2 ? [...vs].reverse() : vs) await lifecycleRound(v);
        const busy = machineBusySeconds() - busy0;
        for (const v of vs) {
          const rate = v.lifecycleOps / (v.lifecycleMs / 1000);
          log(
            NAME,
            `[${v.name}] hibernate/wake, ${LIFECYCLE_CLIENTS} clients: ${rate.toFixed(1)} ops/s, calls ${fmtP(v.lifecycle)}; gateway+worker CPU ${((v.lifecycleCpu / v.lifecycleOps) * 1000).toFixed(1)} ms/op; ${(v.lifecycleCommits / v.lifecycleOps).toFixed(1)} SQL transactions/op (n=${v.lifecycleOps})`,
          );
          log(NAME, `[${v.name}]   temporal:  ${await updateRoundTrips(v.stack, v.lifecycleIds.slice(0, 5))}`);
        }
        log(
          NAME,
          `(machine busy during the lifecycle rounds: ${(busy / ((vs[0].lifecycleMs + vs[1].lifecycleMs) / 1000)).toFixed(2)} of 2 cores, shared with whatever else runs)`,
        );

        // Stops of the lifecycle sessions, 10 at a time (each is two state writes around a stop_session).
        for (const v of vs) {
          const t0 = now();
          await mapLimit(v.lifecycleIds, 10, async (id) => {
            const t = now();
            const r = await v.stack.call<{ state: string }>('DELETE', `/api/v1/sessions/${id}?wait=30`, undefined, v.token);
            if (r.status !== 200 || r.body.state !== 'terminated') throw new Error(`${v.name}: stop ${id}: ${r.status} ${JSON.stringify(r.body)}`);
            v.stops.push(ms(t));
          });
          log(NAME, `[${v.name}] stop, 10 at a time: ${fmtP(v.stops)}; ${(v.stops.length / (ms(t0) / 1000)).toFixed(1)} ops/s`);
        }
        for (const v of vs) {
          // "Nothing twice": one command per (session, generation) in the command log.
          const twice = await v.stack.pool.query<{ k: string }>(
            `SELECT session_id || ':' || generation AS k FROM agent_commands GROUP BY session_id, generation HAVING COUNT(*) > 1`,
          );
          log(
            NAME,
            `[${v.name}] agent received ${v.agent.commandsReceived} command frames for ${v.ids.length} sessions; commands issued twice: ${twice.rowCount}`,
          );
          if (twice.rowCount)
            throw new Error(
              `${v.name}: operations issued twice: ${twice.rows
                .slice(0, 5)
                .map((r) => r.k)
                .join(', ')}`,
            );
        }

        // Terminate the workflows directly: stopping some 250 sessions through the API would take
        // longer than the measurements, and the database is dropped with the Stack anyway.
        for (const v of vs)
          await mapLimit(v.ids, 10, (id) =>
            v.stack.temporal.workflow
              .getHandle(sessionWorkflowId(id))
              .terminate('bench done')
              .catch(() => undefined),
          );

        const [b, a] = vs;
        const rate = (v: Variant) => `${(v.lifecycleOps / (v.lifecycleMs / 1000)).toFixed(1)} ops/s, ${fmtP(v.lifecycle)}`;
        return [
          {
            metric: 'command dispatch, API call → agent has it (sequential)',
            ours: `${fmtP(a.sequential)} (n=${a.sequential.length}); before: ${fmtP(b.sequential)}`,
            target: 'p50 < 50 ms',
            peer: '—',
          },
          {
            metric: `command dispatch, ${CREATORS} concurrent creators`,
            ours: `${fmtP(a.concurrent)} (n=${a.concurrent.length}); before: ${fmtP(b.concurrent)}`,
            target: 'p50 < 50 ms',
            peer: '—',
          },
          {
            metric: `hibernate/wake, ${LIFECYCLE_CLIENTS} concurrent clients (instant agent)`,
            ours: `${rate(a)}; before: ${rate(b)}`,
            target: '3× before',
            peer: '—',
          },
        ];
      } finally {
        for (const v of vs) v.agent.close();
      }
    }),
  );
}
