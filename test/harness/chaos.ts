/**
 * The chaos run (issue 10, item 6), shared by test/chaos.test.ts (short) and bench/chaos.ts
 * (`npm run chaos`, 200 sessions).
 *
 * Topology: 2 API pods (Redis agent hub), 2 workers, N fake agents (agents/fake, the real agent
 * runtime and journal with a driver that keeps its "containers" in a state file) and one real
 * Docker agent with a small MAX_SESSIONS, agents split between the pods. Sessions churn through
 * create → running → hibernate → hibernated → wake → running → stop → terminated with bounded
 * concurrency while faults are injected one after another: kill -9 an API pod, a worker, an
 * agent; restart PostgreSQL and Redis in place (as scripts/services.sh runs them); SIGSTOP an
 * agent past the start deadline and the heartbeat timeout, then SIGCONT.
 *
 * The client alternates between the two pods and fails over on connection errors and 5xx. A
 * create whose answer was lost is looked up by its unique tag before it is sent again.
 *
 * Counted at the end, after a recovery window:
 *   lost           operations neither completed nor failed with a reason (stuck or missing)
 *   executed twice (session, generation) pairs created more than once, counted where the
 *                  drivers act: fake agents' events files and `docker events` creates
 *                  (plus sessions duplicated by a retried create)
 *   divergent      sessions whose database state differs from what the agents hold
 *                  (terminated/failed: nothing; running: running; hibernated: stopped),
 *                  and anything an agent holds for no session of the run
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { TEST_ENV } from './env';
import { ApiPod, ApiResponse, Proc, ROOT, sleep, Stack } from './stack';

const run = promisify(execFile);

export type FaultName = 'api-pod-kill' | 'worker-kill' | 'agent-kill' | 'postgres-restart' | 'redis-restart' | 'agent-freeze';
export const ALL_FAULTS: FaultName[] = ['api-pod-kill', 'worker-kill', 'agent-kill', 'postgres-restart', 'redis-restart', 'agent-freeze'];

export interface ChaosOptions {
  /** Sessions to churn (each: create, hibernate, wake, stop). */
  sessions: number;
  /** Sessions in flight at once. */
  concurrency: number;
  fakeAgents?: number;
  /** MAX_SESSIONS of each fake agent. */
  fakeMaxSessions?: number;
  /** Run one real Docker agent too (default true) with this MAX_SESSIONS (default 3). */
  dockerAgent?: boolean;
  dockerMaxSessions?: number;
  faults?: FaultName[];
  /** SESSION_START_TIMEOUT (the start command's deadline). */
  startTimeout?: string;
  /** AGENT_HEARTBEAT_TIMEOUT. */
  heartbeatTimeout?: string;
  /** How long the frozen agent stays stopped (must exceed both of the above). */
  freezeMs?: number;
  /** How long PostgreSQL / Redis stay down, and killed processes stay dead, before restarting. */
  downMs?: number;
  /** Pause after a fault has recovered before the next one. */
  gapMs?: number;
  /** Pause between a session's operations (random 0..thinkMs). */
  thinkMs?: number;
  /** How long one operation may take before it is left for the final check. */
  opTimeoutMs?: number;
  /** After the churn: how long to wait for stragglers and reconciliation before counting. */
  recoveryWindowMs?: number;
  /**
   * FAKE_START_DELAY of the two fake agents that are killed and frozen (default 1500ms): their
   * starts take long enough that each agent fault is injected while a start is under way there.
   */
  targetStartDelay?: string;
  /** Extra environment for every fake agent (e.g. AGENT_STATE_DIR=none to break the journal). */
  /**
   * A broken client, to show the run goes red: a create whose answer was lost is sent again
   * without looking for the session it may have made (duplicates are counted as executed twice).
   */
  naiveCreate?: boolean;
  fakeAgentEnv?: NodeJS.ProcessEnv;
  testName?: string;
  log?: (line: string) => void;
}

export type OpKind = 'create' | 'hibernate' | 'wake' | 'stop';
const TARGET: Record<OpKind, string> = { create: 'running', hibernate: 'hibernated', wake: 'running', stop: 'terminated' };

export interface OpRecord {
  n: number;
  session: string | null;
  kind: OpKind;
  startedAt: number;
  endedAt: number | null;
  outcome: 'completed' | 'failed' | 'pending';
  reason?: string;
  /** HTTP attempts (more than one: a fault made the client retry or fail over). */
  attempts: number;
}

export interface FaultRecord {
  name: FaultName;
  target: string;
  injectedAt: number;
  /** What was under way when it was injected (e.g. the start command it hit). */
  hit: string;
  /** Operations started before the injection and not finished at it. */
  inFlight: number;
  /** Process back / service back (restart finished). */
  restoredAt: number | null;
  /** Both pods ready and every agent online with a fresh heartbeat. */
  healthyAt: number | null;
  /** First operation completed after the injection. */
  firstOpAt: number | null;
  windowEnd: number;
  completed: number;
  failed: number;
  lost: number;
  executedTwice: number;
  divergent: number;
  recoverMs: number | null;
  error?: string;
}

export interface ChaosResult {
  sessions: number;
  durationMs: number;
  ops: { total: number; completed: number; failed: number; lost: number };
  executedTwice: number;
  duplicateSessions: number;
  divergent: number;
  faults: FaultRecord[];
  failures: { session: string | null; kind: OpKind; reason: string; startedAt: number; endedAt: number | null }[];
  lostOps: OpRecord[];
  doubles: { session: string; generation: string; creates: number; source: string }[];
  divergences: { session: string; db: string; agents: string }[];
  creates: { fake: number; docker: number };
  table: string;
  logDir: string;
}

interface Ctx {
  stack: Stack;
  pods: { name: string; url: string; proc: Proc; agentUrl: string }[];
  token: string;
  runId: string;
  o: Required<Omit<ChaosOptions, 'fakeAgentEnv' | 'log' | 'testName' | 'naiveCreate'>> & Pick<ChaosOptions, 'fakeAgentEnv' | 'log' | 'naiveCreate'>;
  /** Creates (POST /api/v1/sessions) under way, per pod index. */
  creating: number[];
  fakeIds: string[];
  dockerId: string | null;
  ops: OpRecord[];
  rr: number;
  /** Faults injected so far (paces the launches). */
  injected: number;
  /** A fault is waiting for a command to hit: launch freely meanwhile. */
  awaitingTarget: boolean;
  churnDone: boolean;
  log: (line: string) => void;
}

/** ms of a duration string such as "4s", "500ms" (for the options above). */
function durMs(v: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(v);
  if (!m) throw new Error(`bad duration ${v}`);
  return Number(m[1]) * (m[2] === 'm' ? 60_000 : m[2] === 'ms' ? 1 : 1000);
}

// ---------------------------------------------------------------------------------------- client

/** One HTTP call to one pod; throws on connection errors and timeouts. */
async function callPod<T = any>(base: string, method: string, urlPath: string, token: string, body?: unknown, timeoutMs = 30_000): Promise<ApiResponse<T>> {
  const res = await fetch(base + urlPath, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), authorization: `Bearer ${token}` },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed as T };
}

/**
 * Alternates between the pods; on a connection error or a 5xx other than 502 (an agent's own
 * failure) tries the other pod, then backs off, until deadline. `ambiguous` is told when a
 * request may have been executed without its answer arriving (connection dropped, timeout, 5xx).
 * `once`: not repeated (a create): the first ambiguous outcome is returned (status 0 when no
 * answer came at all) for the caller to find out what happened.
 */
async function call<T = any>(
  c: Ctx,
  method: string,
  urlPath: string,
  body: unknown,
  deadline: number,
  onAttempt: () => void = () => undefined,
  once = false,
): Promise<ApiResponse<T> & { ambiguous: boolean }> {
  let ambiguous = false;
  let last = '';
  for (let i = 0; ; i++) {
    const podIx = c.rr++ % c.pods.length;
    const pod = c.pods[podIx];
    onAttempt();
    const isCreate = method === 'POST' && urlPath === '/api/v1/sessions';
    if (isCreate) c.creating[podIx]++;
    try {
      const r = await callPod<T>(pod.url, method, urlPath, c.token, body).finally(() => {
        if (isCreate) c.creating[podIx]--;
      });
      if (r.status < 500 || r.status === 502) return { ...r, ambiguous };
      ambiguous = true;
      last = `${r.status} ${JSON.stringify(r.body).slice(0, 200)}`;
      if (once) return { ...r, ambiguous };
    } catch (err) {
      ambiguous = true;
      last = (err as Error).message;
      if (once) return { status: 0, body: last as T, ambiguous };
    }
    if (Date.now() > deadline) throw new Error(`${method} ${urlPath}: no answer before the deadline (last: ${last})`);
    if (i % c.pods.length === c.pods.length - 1) await sleep(Math.min(2000, 200 * (i + 1)));
  }
}

// ---------------------------------------------------------------------------------------- churn

async function getSession(c: Ctx, id: string, deadline: number): Promise<any | null> {
  const r = await call(c, 'GET', `/api/v1/sessions/${id}`, undefined, deadline);
  if (r.status === 404) return null;
  if (r.status !== 200) throw new Error(`GET session ${id}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** Polls the session until it reaches `target`, fails, or the deadline passes. */
async function awaitState(c: Ctx, rec: OpRecord, target: string, deadline: number): Promise<void> {
  for (;;) {
    let s: any;
    try {
      s = await getSession(c, rec.session!, deadline);
    } catch {
      s = undefined;
    }
    if (s === null) return finish(rec, 'failed', 'session vanished (404)');
    if (s) {
      if (s.state === target) return finish(rec, 'completed');
      if (s.state === 'failed' && target !== 'failed') return finish(rec, 'failed', `session failed: ${s.error}`);
      // A failed wake leaves the session hibernated with the reason and no transition under way.
      if (rec.kind === 'wake' && s.state === 'hibernated' && s.error && /wake failed/.test(s.error) && !s.transition) return finish(rec, 'failed', s.error);
    }
    if (Date.now() > deadline) return; // stays pending: decided by the final check
    await sleep(250);
  }
}

function finish(rec: OpRecord, outcome: 'completed' | 'failed', reason?: string): void {
  rec.outcome = outcome;
  rec.endedAt = Date.now();
  if (reason) rec.reason = reason;
}

async function create(c: Ctx, n: number): Promise<OpRecord> {
  const tag = `chaos-${c.runId}-${n}`;
  const rec: OpRecord = { n, session: null, kind: 'create', startedAt: Date.now(), endedAt: null, outcome: 'pending', attempts: 0 };
  c.ops.push(rec);
  const deadline = rec.startedAt + c.o.opTimeoutMs;
  for (;;) {
    let r: (ApiResponse & { ambiguous: boolean }) | null = null;
    try {
      r = await call(c, 'POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', tags: [tag] }, deadline, () => rec.attempts++, true);
    } catch {
      r = null;
    }
    if (r && r.status === 201) {
      rec.session = r.body.id;
      break;
    }
    if (r && r.status < 500 && !r.ambiguous) return (finish(rec, 'failed', `create refused: ${r.status} ${JSON.stringify(r.body)}`), rec);
    if (c.o.naiveCreate) {
      if (Date.now() > deadline) return (finish(rec, 'failed', 'create: no answer before the deadline'), rec);
      await sleep(100);
      continue;
    }
    // The answer was lost (or an error after the row may exist): find it by its tag before
    // creating again; the lookup itself is repeated until it answers.
    let found: any[] | null = null;
    while (found === null && Date.now() < deadline) {
      const l = await call(c, 'GET', `/api/v1/sessions?tag=${encodeURIComponent(tag)}`, undefined, deadline).catch(() => null);
      if (l?.status === 200 && Array.isArray(l.body)) found = l.body;
      else await sleep(250);
    }
    if (found && found.length) {
      rec.session = found[found.length - 1].id;
      break;
    }
    if (Date.now() > deadline) return (finish(rec, 'failed', 'create: no answer and no session with its tag before the deadline'), rec);
  }
  await awaitState(c, rec, 'running', deadline);
  return rec;
}

async function lifecycleOp(c: Ctx, n: number, session: string, kind: Exclude<OpKind, 'create'>): Promise<OpRecord> {
  const rec: OpRecord = { n, session, kind, startedAt: Date.now(), endedAt: null, outcome: 'pending', attempts: 0 };
  c.ops.push(rec);
  const deadline = rec.startedAt + c.o.opTimeoutMs;
  const [method, urlPath] = kind === 'stop' ? ['DELETE', `/api/v1/sessions/${session}`] : ['POST', `/api/v1/sessions/${session}/${kind}`];
  // Hibernate, wake and stop are safe to repeat (a hibernated session stays hibernated): retried
  // until an answer arrives.
  let r: ApiResponse;
  try {
    r = await call(c, method, urlPath, undefined, deadline, () => rec.attempts++);
  } catch (err) {
    await awaitState(c, rec, TARGET[kind], deadline);
    if (rec.outcome === 'pending' && Date.now() > deadline) rec.reason = (err as Error).message;
    return rec;
  }
  if (r.status === 200 && r.body?.state === TARGET[kind]) return (finish(rec, 'completed'), rec);
  if (r.status === 200 || r.status === 202) {
    await awaitState(c, rec, TARGET[kind], deadline);
    return rec;
  }
  finish(rec, 'failed', `${kind}: ${r.status} ${r.body?.message ?? JSON.stringify(r.body)}`);
  return rec;
}

async function churnOne(c: Ctx, n: number): Promise<void> {
  const think = () => sleep(Math.random() * c.o.thinkMs);
  const created = await create(c, n);
  if (!created.session) return;
  const id = created.session;
  if (created.outcome === 'completed') {
    await think();
    const h = await lifecycleOp(c, n, id, 'hibernate');
    if (h.outcome === 'completed') {
      await think();
      await lifecycleOp(c, n, id, 'wake');
    }
    await think();
  }
  // Always stopped at the end (also after a failure or an operation left pending).
  await lifecycleOp(c, n, id, 'stop');
}

// ---------------------------------------------------------------------------------------- faults

function pgBin(): string {
  const dirs = readdirSync('/usr/lib/postgresql')
    .map((v) => path.join('/usr/lib/postgresql', v, 'bin'))
    .filter((d) => existsSync(path.join(d, 'pg_ctl')))
    .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  if (!dirs.length) throw new Error('pg_ctl not found under /usr/lib/postgresql');
  return dirs[dirs.length - 1];
}

const STATE_DIR = process.env.STREAMSPACE_STATE ?? '/var/lib/streamspace';
const SERVICES = path.join(ROOT, 'scripts', 'services.sh');

/** Stops PostgreSQL (pg_ctl -m fast, as scripts/services.sh does), waits, starts it again with the script. */
async function restartPostgres(downMs: number): Promise<void> {
  await run('runuser', ['-u', 'postgres', '--', path.join(pgBin(), 'pg_ctl'), '-D', path.join(STATE_DIR, 'pg'), '-m', 'fast', '-w', '-t', '30', 'stop']);
  await sleep(downMs);
  await run('bash', [SERVICES, 'start'], { timeout: 120_000 });
}

/** Shuts Redis down (nosave, as scripts/services.sh does), waits, starts it again with the script. */
async function restartRedis(downMs: number): Promise<void> {
  const u = new URL(TEST_ENV.redisUrl);
  await run('redis-cli', ['-h', '127.0.0.1', '-p', u.port, 'shutdown', 'nosave'], {
    env: { ...process.env, REDISCLI_AUTH: decodeURIComponent(u.password) },
  }).catch(() => undefined); // the connection closes as the server exits
  await sleep(downMs);
  await run('bash', [SERVICES, 'start'], { timeout: 120_000 });
}

async function isHealthy(c: Ctx): Promise<boolean> {
  for (const p of c.pods) {
    const r = await callPod(p.url, 'GET', '/ready', c.token, undefined, 3000).catch(() => null);
    if (!r || r.status !== 200) return false;
  }
  const r = await callPod<any[]>(c.pods[0].url, 'GET', '/api/v1/agents', c.token, undefined, 3000).catch(() => null);
  if (!r || r.status !== 200) return false;
  const hb = durMs(c.o.heartbeatTimeout);
  const ours = [...c.fakeIds, ...(c.dockerId ? [c.dockerId] : [])];
  return ours.every((id) => {
    const a = r.body.find((x) => x.agent_id === id);
    return a && a.status === 'online' && Date.now() - Date.parse(a.last_heartbeat) < hb;
  });
}

/**
 * Waits (up to 20 s) until a command is under way (sent to or acknowledged by the agent, not
 * finished), on agentId if given, so the fault hits it; describes it.
 */
async function commandInFlight(c: Ctx, agentId: string | null, type?: string): Promise<string> {
  const until = Date.now() + 20_000;
  c.awaitingTarget = true;
  try {
    return await findCommand(c, agentId, type, until);
  } finally {
    c.awaitingTarget = false;
  }
}

async function findCommand(c: Ctx, agentId: string | null, type: string | undefined, until: number): Promise<string> {
  while (Date.now() < until) {
    const r = await c.stack.pool
      .query<{ session_id: string; command_type: string; status: string; generation: number; agent: string }>(
        `SELECT c.session_id, c.command_type, c.status, c.generation, a.agent_id AS agent FROM agent_commands c JOIN agents a ON a.id = c.agent_id
          WHERE c.status IN ('sent', 'ack') AND c.withdrawn_at IS NULL AND ($1::text IS NULL OR a.agent_id = $1) AND ($2::text IS NULL OR c.command_type = $2)
          ORDER BY c.created_at DESC LIMIT 1`,
        [agentId, type ?? null],
      )
      .catch(() => ({ rows: [] }));
    const x = r.rows[0];
    if (x) return `${x.command_type} gen ${x.generation} of ${x.session_id} (${x.status}) on ${x.agent}`;
    await sleep(20);
  }
  return 'nothing under way';
}

/** The moment of injection, and what was in flight then. */
function mark(c: Ctx, f: FaultRecord): void {
  f.injectedAt = Date.now();
  c.injected++;
  f.inFlight = c.ops.filter((r) => r.outcome === 'pending').length;
  c.log(`  injected ${f.name} at ${new Date(f.injectedAt).toISOString()}${f.hit ? ` while ${f.hit}` : ''}; ${f.inFlight} operations in flight`);
}

async function inject(c: Ctx, f: FaultRecord): Promise<void> {
  const { stack, o } = c;
  switch (f.name) {
    case 'api-pod-kill': {
      const pod = c.pods[1];
      f.target = pod.name;
      // While a create is under way on it: its answer is lost, the client must not create twice.
      c.awaitingTarget = true;
      const until = Date.now() + 20_000;
      while (!c.creating[1] && Date.now() < until) await sleep(2);
      c.awaitingTarget = false;
      f.hit = c.creating[1] ? `${c.creating[1]} create request(s) under way on ${pod.name}` : '';
      mark(c, f);
      await pod.proc.kill('SIGKILL');
      await sleep(o.downMs);
      pod.proc.start();
      await pod.proc.waitForLog(/Server started/, 60_000);
      return;
    }
    case 'worker-kill': {
      f.target = 'worker';
      f.hit = await commandInFlight(c, null);
      mark(c, f);
      await stack.worker.kill('SIGKILL');
      await sleep(o.downMs);
      await stack.startWorker();
      return;
    }
    case 'agent-kill': {
      const id = c.fakeIds[0];
      f.target = id;
      f.hit = await commandInFlight(c, id, 'start_session');
      mark(c, f);
      await stack.agents.get(id)!.kill('SIGKILL');
      await sleep(o.downMs);
      await stack.startFakeAgent(id);
      return;
    }
    case 'postgres-restart':
      f.target = `postgres (${STATE_DIR}/pg)`;
      mark(c, f);
      await restartPostgres(o.downMs);
      return;
    case 'redis-restart':
      f.target = 'redis';
      mark(c, f);
      await restartRedis(o.downMs);
      return;
    case 'agent-freeze': {
      const id = c.fakeIds[1 % c.fakeIds.length];
      f.target = `${id} (${Math.round(o.freezeMs / 1000)}s)`;
      const proc = stack.agents.get(id)!;
      f.hit = await commandInFlight(c, id, 'start_session');
      mark(c, f);
      proc.signal('SIGSTOP');
      try {
        await sleep(o.freezeMs);
      } finally {
        proc.signal('SIGCONT');
      }
      return;
    }
  }
}

async function runFaults(c: Ctx, faults: FaultRecord[]): Promise<void> {
  for (let i = 0; i < faults.length; i++) {
    const f = faults[i];
    c.log(`fault ${i + 1}/${faults.length}: ${f.name}`);
    try {
      await inject(c, f);
      f.restoredAt = Date.now();
      const until = Date.now() + 120_000;
      while (!f.healthyAt && Date.now() < until) {
        if (await isHealthy(c)) f.healthyAt = Date.now();
        else await sleep(200);
      }
      // Recovered once healthy and an operation has completed after the injection.
      while (Date.now() < until && !c.churnDone && !c.ops.some((r) => r.outcome === 'completed' && r.endedAt! > f.injectedAt)) await sleep(100);
      // The churn may have run out of sessions (a short run, or a fault that waited for its target):
      // recovery is then shown by one more session driven through its lifecycle after the fault.
      if (!c.ops.some((r) => r.outcome === 'completed' && r.endedAt! > f.injectedAt)) {
        c.log(`  ${f.name}: nothing completed since the injection; probing with one more session`);
        await churnOne(c, c.o.sessions + i).catch((err) => c.log(`  probe after ${f.name} failed: ${(err as Error).message}`));
      }
    } catch (err) {
      f.error = (err as Error).message;
      if (!f.injectedAt) f.injectedAt = Date.now();
      c.log(`fault ${f.name} could not be injected: ${f.error}`);
    }
    const first = c.ops.filter((r) => r.outcome === 'completed' && r.endedAt! > f.injectedAt).map((r) => r.endedAt!);
    f.firstOpAt = first.length ? Math.min(...first) : null;
    if (f.healthyAt && f.firstOpAt) f.recoverMs = Math.max(f.healthyAt, f.firstOpAt) - f.injectedAt;
    c.log(`  ${f.name} on ${f.target}: healthy after ${f.healthyAt ? f.healthyAt - f.injectedAt : '-'} ms`);
    await sleep(c.o.gapMs);
  }
}

// ---------------------------------------------------------------------------------------- checks

interface AgentHeld {
  agent: string;
  state: 'running' | 'stopped';
}

/** What every agent of the run holds, per session: fake state files and Docker containers. */
async function agentsHold(c: Ctx): Promise<Map<string, AgentHeld[]>> {
  const held = new Map<string, AgentHeld[]>();
  const add = (session: string, h: AgentHeld) => held.set(session, [...(held.get(session) ?? []), h]);
  for (const id of c.fakeIds) {
    const file = c.stack.fakeStateFile(id);
    if (!existsSync(file)) continue;
    const s = JSON.parse(readFileSync(file, 'utf8')) as Record<string, { state: string }>;
    for (const [session, v] of Object.entries(s)) add(session, { agent: id, state: v.state === 'running' ? 'running' : 'stopped' });
  }
  if (c.dockerId)
    for (const ct of await c.stack.containers())
      add(ct.Labels['io.streamspace.session-id'], { agent: ct.Labels['io.streamspace.agent-id'], state: ct.State === 'running' ? 'running' : 'stopped' });
  return held;
}

async function divergences(c: Ctx): Promise<{ session: string; db: string; agents: string }[]> {
  const rows = (
    await c.stack.pool.query<{ id: string; state: string; agent: string | null }>(
      `SELECT s.id, s.state, a.agent_id AS agent FROM sessions s LEFT JOIN agents a ON a.id = s.agent_id WHERE s.tags::text LIKE $1`,
      [`%chaos-${c.runId}-%`],
    )
  ).rows;
  const held = await agentsHold(c);
  const out: { session: string; db: string; agents: string }[] = [];
  const show = (h: AgentHeld[] | undefined) => (h?.length ? h.map((x) => `${x.state}@${x.agent}`).join(',') : 'nothing');
  for (const r of rows) {
    const h = held.get(r.id) ?? [];
    held.delete(r.id);
    let ok: boolean;
    if (r.state === 'terminated' || r.state === 'failed') ok = h.length === 0;
    else if (r.state === 'running') ok = h.length === 1 && h[0].state === 'running' && h[0].agent === r.agent;
    else if (r.state === 'hibernated') ok = h.length === 0 ? r.agent === null : h.length === 1 && h[0].state === 'stopped' && h[0].agent === r.agent;
    else ok = false; // pending / terminating at the end: stuck in a transition
    if (!ok) out.push({ session: r.id, db: `${r.state}${r.agent ? '@' + r.agent : ''}`, agents: show(h) });
  }
  for (const [session, h] of held) out.push({ session, db: 'no session of this run', agents: show(h) });
  return out;
}

interface CreateEvent {
  at: number;
  session: string;
  generation: string;
  source: string;
}

function fakeCreates(c: Ctx): CreateEvent[] {
  const out: CreateEvent[] = [];
  for (const id of c.fakeIds) {
    const file = c.stack.fakeEventsFile(id);
    if (!existsSync(file)) continue;
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      if (!line.trim()) continue;
      const e = JSON.parse(line) as { at: number; session: string; generation: number | null; event: string };
      if (e.event === 'created') out.push({ at: e.at, session: e.session, generation: String(e.generation), source: id });
    }
  }
  return out;
}

/** Docker container creates by this run's Docker agent, from the engine's event stream. */
async function watchDockerCreates(stack: Stack, agentId: string): Promise<{ events: CreateEvent[]; close: () => void }> {
  const events: CreateEvent[] = [];
  const stream = (await stack.docker.getEvents({
    filters: { type: ['container'], event: ['create'], label: [`io.streamspace.agent-id=${agentId}`] },
  })) as unknown as NodeJS.ReadableStream & { destroy?: () => void };
  let buf = '';
  stream.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!line.trim()) continue;
      try {
        const e = JSON.parse(line);
        const a = e.Actor?.Attributes ?? {};
        events.push({
          at: Math.round((e.timeNano ?? e.time * 1e9) / 1e6),
          session: a['io.streamspace.session-id'],
          generation: String(a['io.streamspace.generation']),
          source: agentId,
        });
      } catch {
        // partial line
      }
    }
  });
  stream.on('error', () => undefined);
  return { events, close: () => stream.destroy?.() };
}

function doubles(creates: CreateEvent[]): { session: string; generation: string; creates: number; source: string; at: number }[] {
  const by = new Map<string, CreateEvent[]>();
  for (const e of creates) by.set(`${e.session}/${e.generation}`, [...(by.get(`${e.session}/${e.generation}`) ?? []), e]);
  return [...by.values()]
    .filter((l) => l.length > 1)
    .map((l) => ({
      session: l[0].session,
      generation: l[0].generation,
      creates: l.length,
      source: [...new Set(l.map((e) => e.source))].join(','),
      at: l[1].at,
    }));
}

// ---------------------------------------------------------------------------------------- table

function fmtMs(ms: number | null): string {
  return ms === null ? '—' : ms < 10_000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms / 1000)} s`;
}

export function chaosTable(r: Omit<ChaosResult, 'table'>): string {
  const head = [
    'fault',
    'target',
    'in flight',
    'ops completed',
    'failed (reason)',
    'lost',
    'executed twice',
    'divergent',
    'back after',
    'healthy after',
    'recovered in',
  ];
  const rows = r.faults.map((f) => [
    f.name,
    f.target,
    String(f.inFlight),
    String(f.completed),
    String(f.failed),
    String(f.lost),
    String(f.executedTwice),
    String(f.divergent),
    f.restoredAt ? fmtMs(f.restoredAt - f.injectedAt) : '—',
    f.healthyAt ? fmtMs(f.healthyAt - f.injectedAt) : '—',
    f.error ? `not injected: ${f.error.slice(0, 40)}` : fmtMs(f.recoverMs),
  ]);
  rows.push([
    'whole run',
    `${r.sessions} sessions`,
    '',
    String(r.ops.completed),
    String(r.ops.failed),
    String(r.ops.lost),
    String(r.executedTwice + r.duplicateSessions),
    String(r.divergent),
    '',
    '',
    fmtMs(r.durationMs),
  ]);
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((x) => x[i].length)));
  const line = (x: string[]) => '| ' + x.map((v, i) => v.padEnd(w[i])).join(' | ') + ' |';
  return [line(head), '|' + w.map((n) => '-'.repeat(n + 2)).join('|') + '|', ...rows.map(line)].join('\n');
}

// ---------------------------------------------------------------------------------------- run

/** Stacks of runs under way (a CLI interrupted with ^C stops them: see bench/chaos.ts). */
export const activeChaosStacks = new Set<Stack>();

export async function runChaos(options: ChaosOptions): Promise<ChaosResult> {
  const o = {
    fakeAgents: 4,
    fakeMaxSessions: 50,
    dockerAgent: true,
    dockerMaxSessions: 3,
    faults: ALL_FAULTS,
    startTimeout: '15s',
    heartbeatTimeout: '3s',
    freezeMs: 20_000,
    downMs: 1000,
    gapMs: 2000,
    thinkMs: 1500,
    opTimeoutMs: 120_000,
    recoveryWindowMs: 30_000,
    targetStartDelay: '1500ms',
    ...options,
  };
  if (o.freezeMs <= Math.max(durMs(o.startTimeout), durMs(o.heartbeatTimeout)))
    throw new Error('freezeMs must exceed the start timeout and the heartbeat timeout');
  const log = o.log ?? ((l: string) => process.stdout.write(`[chaos ${new Date().toISOString().slice(11, 23)}] ${l}\n`));
  const stack = new Stack(o.testName ?? 'chaos', {
    AGENT_HUB_BACKEND: 'redis',
    REDIS_URL: TEST_ENV.redisUrl,
    POD_ID: `api-1-${Math.random().toString(16).slice(2, 10)}`,
    SESSION_START_TIMEOUT: o.startTimeout,
    AGENT_HEARTBEAT_TIMEOUT: o.heartbeatTimeout,
  });
  activeChaosStacks.add(stack);
  const t0 = Date.now();
  let docker: { events: CreateEvent[]; close: () => void } | null = null;
  try {
    await stack.start();
    // PostgreSQL restarts under the run: an idle client's error must not end this process.
    stack.pool.on('error', () => undefined);
    const pod2: ApiPod = await stack.startApiPod('api-2');
    await stack.startExtraWorker('worker-2');
    const pods = [
      { name: 'api-1', url: stack.url, proc: stack.api, agentUrl: `ws://127.0.0.1:${stack.agentPort}` },
      { name: 'api-2', url: pod2.url, proc: pod2.proc, agentUrl: pod2.agentUrl },
    ];
    const fakeIds = Array.from({ length: o.fakeAgents }, (_, i) => `fake-chaos-${i + 1}`);
    const dockerId = o.dockerAgent ? 'docker-chaos-1' : null;
    if (dockerId) docker = await watchDockerCreates(stack, dockerId);
    // Agents split between the pods: the killed pod (api-2) holds half of them.
    await Promise.all(
      fakeIds.map((id, i) =>
        stack.startFakeAgent(id, {
          CONTROL_PLANE_URL: pods[i % 2 === 0 ? 1 : 0].agentUrl,
          MAX_SESSIONS: String(o.fakeMaxSessions),
          // fake-chaos-1 is killed, fake-chaos-2 frozen: slower starts, so a start is under way when they are.
          ...(i < 2 ? { FAKE_START_DELAY: o.targetStartDelay } : {}),
          ...(o.fakeAgentEnv ?? {}),
        }),
      ),
    );
    if (dockerId)
      await stack.startDockerAgent(dockerId, { MAX_SESSIONS: String(o.dockerMaxSessions), VNC_PORT_RANGE: '15800-15849', CONTROL_PLANE_URL: pods[0].agentUrl });
    const token = await stack.login();
    const c: Ctx = {
      stack,
      pods,
      token,
      runId: stack.id,
      o,
      fakeIds,
      dockerId,
      ops: [],
      rr: 0,
      injected: 0,
      awaitingTarget: false,
      churnDone: false,
      creating: pods.map(() => 0),
      log,
    };
    log(`stack ${stack.id} up in ${Date.now() - t0} ms (logs: ${stack.logDir}); ${o.sessions} sessions, concurrency ${o.concurrency}`);

    // Churn: launches are spread over the fault schedule (until fault k is injected, at most
    // (k+1)/(F+1) of the sessions are launched; freely while a fault waits for a command to hit),
    // so every fault hits sessions in flight and some are left for after the last one.
    const faults: FaultRecord[] = o.faults.map((name) => ({
      name,
      target: '',
      injectedAt: 0,
      hit: '',
      inFlight: 0,
      restoredAt: null,
      healthyAt: null,
      firstOpAt: null,
      windowEnd: 0,
      completed: 0,
      failed: 0,
      lost: 0,
      executedTwice: 0,
      divergent: 0,
      recoverMs: null,
    }));
    let next = 0;
    const churnStart = Date.now();
    const quota = () => (c.injected >= faults.length ? o.sessions : Math.ceil((o.sessions * (c.injected + 1)) / (faults.length + 1)));
    const worker = async () => {
      for (;;) {
        while (next < o.sessions && next >= quota() && !c.awaitingTarget) await sleep(50);
        if (next >= o.sessions) return;
        const n = next++;
        await churnOne(c, n).catch((err) => log(`session ${n}: driver error ${(err as Error).stack}`));
      }
    };
    const churn = Promise.all(Array.from({ length: o.concurrency }, worker)).then(() => (c.churnDone = true));
    // Warm-up: faults start once the churn has completed some operations.
    while (!c.ops.some((r) => r.outcome === 'completed') && Date.now() - churnStart < 60_000) await sleep(100);
    await runFaults(c, faults);
    c.injected = faults.length;
    await churn;
    const churnEnd = Date.now();
    log(`churn done in ${churnEnd - churnStart} ms; waiting up to ${o.recoveryWindowMs} ms for stragglers and reconciliation`);

    // Recovery window: pending operations may still finish; reconciliation may still repair.
    const until = Date.now() + o.recoveryWindowMs;
    let div = await divergences(c).catch(() => []);
    for (;;) {
      const pending = c.ops.filter((r) => r.outcome === 'pending');
      for (const r of pending) {
        if (!r.session) continue;
        const s = await getSession(c, r.session, Date.now() + 10_000).catch(() => undefined);
        if (s && s.state === TARGET[r.kind]) finish(r, 'completed');
        else if (s && s.state === 'failed') finish(r, 'failed', `session failed: ${s.error}`);
      }
      div = await divergences(c);
      if ((!c.ops.some((r) => r.outcome === 'pending') && div.length === 0) || Date.now() > until) break;
      await sleep(1000);
    }

    docker?.close();
    const creates = [...fakeCreates(c), ...(docker?.events ?? [])];
    const dbl = doubles(creates);
    const dupSessions = (
      await stack.pool.query<{ tag: string; n: number }>(
        `SELECT t AS tag, count(*)::int AS n FROM sessions, jsonb_array_elements_text(tags) t WHERE t LIKE $1 GROUP BY t HAVING count(*) > 1`,
        [`chaos-${c.runId}-%`],
      )
    ).rows;
    const lostOps = c.ops.filter((r) => r.outcome === 'pending');
    // Sessions never created at all (a create that vanished) are lost too.
    // (Only the churn's own sessions 0..n-1: probe sessions after a fault have indices beyond.)
    const missing = o.sessions - new Set(c.ops.filter((r) => r.kind === 'create' && r.n < o.sessions).map((r) => r.n)).size;

    // Per fault: its window runs from its injection to the next one (the last: to the churn's end).
    const divIds = new Set(div.map((d) => d.session));
    faults.forEach((f, i) => {
      f.windowEnd = i + 1 < faults.length ? faults[i + 1].injectedAt : churnEnd;
      const inWin = (t: number | null) => t !== null && t >= f.injectedAt && t < f.windowEnd;
      f.completed = c.ops.filter((r) => r.outcome === 'completed' && inWin(r.endedAt)).length;
      f.failed = c.ops.filter((r) => r.outcome === 'failed' && inWin(r.endedAt)).length;
      f.lost = lostOps.filter((r) => inWin(r.startedAt) || (r.startedAt < f.injectedAt && i === 0)).length;
      f.executedTwice = dbl.filter((d) => inWin(d.at)).length;
      f.divergent = [...divIds].filter((id) => {
        const lastOp = c.ops.filter((r) => r.session === id).sort((a, b) => b.startedAt - a.startedAt)[0];
        return lastOp ? inWin(lastOp.startedAt) : false;
      }).length;
    });

    const res: Omit<ChaosResult, 'table'> = {
      sessions: o.sessions,
      durationMs: Date.now() - churnStart,
      ops: {
        total: c.ops.length,
        completed: c.ops.filter((r) => r.outcome === 'completed').length,
        failed: c.ops.filter((r) => r.outcome === 'failed').length,
        lost: lostOps.length + missing,
      },
      executedTwice: dbl.length,
      duplicateSessions: dupSessions.length,
      divergent: div.length,
      faults,
      failures: c.ops
        .filter((r) => r.outcome === 'failed')
        .map((r) => ({ session: r.session, kind: r.kind, reason: r.reason ?? '', startedAt: r.startedAt, endedAt: r.endedAt })),
      lostOps,
      doubles: dbl,
      divergences: div,
      creates: { fake: creates.filter((e) => e.source !== dockerId).length, docker: creates.filter((e) => e.source === dockerId).length },
      logDir: stack.logDir,
    };
    // For a post-mortem (the database is dropped with the stack): every operation, and the
    // command log and sessions of the run.
    const dump = async (sql: string) => (await stack.pool.query(sql).catch((err: Error) => ({ rows: [{ error: err.message }] }))).rows;
    writeFileSync(
      path.join(stack.logDir, 'chaos-result.json'),
      JSON.stringify(
        {
          faults,
          ops: c.ops,
          sessions: await dump(
            `SELECT s.id, s.state, s.error_message, s.tags, a.agent_id AS agent, s.created_at, s.updated_at FROM sessions s LEFT JOIN agents a ON a.id = s.agent_id ORDER BY s.created_at`,
          ),
          agent_commands: await dump(
            `SELECT c.id, c.session_id, c.command_type, c.status, c.generation, c.retry_count, c.error_message, c.withdrawn_at, c.expires_at, c.created_at, c.sent_at, c.completed_at, a.agent_id AS agent
               FROM agent_commands c LEFT JOIN agents a ON a.id = c.agent_id ORDER BY c.created_at`,
          ),
        },
        null,
        1,
      ),
    );
    return { ...res, table: chaosTable(res) };
  } finally {
    docker?.close();
    // A frozen agent must not outlive the run.
    for (const p of stack.agents.values()) p.signal('SIGCONT');
    await stack.stop().catch((err) => log(`stack stop: ${(err as Error).message}`));
    activeChaosStacks.delete(stack);
  }
}

/** A readable account of everything that went wrong (for the test's failure message and the CLI). */
export function chaosReport(r: ChaosResult): string {
  const lines = [
    r.table,
    '',
    'what each fault hit:',
    ...r.faults.map(
      (f) =>
        `  ${new Date(f.injectedAt).toISOString().slice(11, 23)} ${f.name}: ${f.hit || 'requests and commands under way'} (${f.inFlight} operations in flight)`,
    ),
    '',
    `creates counted: fake ${r.creates.fake}, docker ${r.creates.docker}; logs: ${r.logDir}`,
  ];
  if (r.failures.length) {
    lines.push('', `operations failed with a reason (${r.failures.length}):`);
    const by = new Map<string, number>();
    for (const f of r.failures) {
      const k = `${f.kind}: ${f.reason.replace(/[0-9a-f]{8}-[0-9a-f-]{27}/g, '<id>').slice(0, 160)}`;
      by.set(k, (by.get(k) ?? 0) + 1);
    }
    for (const [k, n] of by) lines.push(`  ${n} × ${k}`);
    const iso = (t: number | null) => (t ? new Date(t).toISOString().slice(11, 23) : '-');
    for (const f of r.failures.slice(0, 30)) lines.push(`    ${f.kind} ${f.session} ${iso(f.startedAt)} → ${iso(f.endedAt)}`);
  }
  if (r.lostOps.length)
    lines.push(
      '',
      'lost operations:',
      ...r.lostOps.map((l) => `  ${l.kind} of session ${l.session} (#${l.n}) started ${new Date(l.startedAt).toISOString()}${l.reason ? ': ' + l.reason : ''}`),
    );
  if (r.doubles.length)
    lines.push('', 'executed twice:', ...r.doubles.map((d) => `  session ${d.session} generation ${d.generation}: ${d.creates} creates (${d.source})`));
  if (r.duplicateSessions) lines.push('', `${r.duplicateSessions} chaos tags carried by more than one session (a retried create made a duplicate)`);
  if (r.divergences.length) lines.push('', 'divergent:', ...r.divergences.map((d) => `  session ${d.session}: database ${d.db}, agents hold ${d.agents}`));
  return lines.join('\n');
}
