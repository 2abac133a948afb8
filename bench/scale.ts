/**
 * Scale: SCALE_SESSIONS sessions (default 10,000) on SCALE_AGENTS protocol-faithful fake agents
 * (default 1,000) plus the real Docker agent running a sample of real desktops, on one gateway and
 * one worker of the dev stack. Every session is created (→ running), then hibernated, woken and
 * stopped, SCALE_CONCURRENCY clients at a time, spread over SCALE_USERS users, on SCALE_WORKERS workers (1).
 *
 * Reported per phase: operations per second (first call → the database shows all of them in the
 * target state), call latency p50/p99, and meanwhile an independent prober's (its own process: bench/prober.ts) `GET /sessions`
 * (first page of 100, and a deep page via the cursor) and `GET /sessions/:id` latencies; CPU
 * seconds per operation of the gateway, the worker and the whole control plane (gateway + worker
 * + Temporal + PostgreSQL + Redis), and their peak RSS. At the end: nothing lost (every session
 * terminated, nothing left on any agent) and nothing duplicated (no operation issued twice: two
 * command ids for one generation).
 *
 * The baseline column is the issue's measurement of the previous release on this machine class
 * (1,000 sessions, 100 fake agents): all 1,000 created → running in 37 s (27/s; the create calls
 * themselves ran at 80/s), about 40 hibernate/wake/stop per second, list p99 62 ms, worker 607 MB.
 */
import { fork } from 'node:child_process';
import { cpus } from 'node:os';
import path from 'node:path';
import { ApiResponse, Proc } from '../test/harness/stack';
import { fmtMs, log, mapLimit, Metric, ms, now, sleep, Stack, summarize, withStack } from './common';
import { FakeAgent } from './fake-agent';
import { machineBusySeconds, pids, ProcGroup, threadCpuSeconds, threadSplit } from './procstat';

const NAME = 'scale';
const env = (k: string, d: number) => (process.env[k] ? Number(process.env[k]) : d);
const SESSIONS = env('SCALE_SESSIONS', 10_000);
const AGENTS = env('SCALE_AGENTS', 1_000);
const USERS = env('SCALE_USERS', 100);
const CONCURRENCY = env('SCALE_CONCURRENCY', 100);
const DOCKER_SAMPLE = env('SCALE_DOCKER_SAMPLE', 4);
/** Worker processes on the task queue (each has its own sticky cache); the first is the stack's. */
const WORKERS = env('SCALE_WORKERS', 1);
const PHASE_TIMEOUT_MS = env('SCALE_PHASE_TIMEOUT_S', 1200) * 1000;

/** The previous release, measured as the issue reports it (2 cores). */
const BASELINE = { create: 27, lifecycle: 40, listP99: 62, workerMb: 607 };

type Op = 'create' | 'hibernate' | 'wake' | 'stop';
const TARGET: Record<Op, string> = { create: 'running', hibernate: 'hibernated', wake: 'running', stop: 'terminated' };

interface PhaseResult {
  op: Op;
  n: number;
  seconds: number;
  failures: string[];
  calls: number[];
  list: number[];
  deep: number[];
  get: number[];
  cpu: Record<string, number>;
  rss: Record<string, number>;
}

/** fetch with a keep-alive agent per client would be nicer; undici's global pool keeps connections. */
async function call<T = any>(stack: Stack, method: string, url: string, token: string, body?: unknown): Promise<[ApiResponse<T>, number]> {
  const t = now();
  const r = await stack.call<T>(method, url, body, token);
  return [r, ms(t)];
}

/**
 * The gateway's event loop over a phase, from its own /metrics: prom-client's delay percentiles
 * cover the time since the previous scrape (it resets its histogram on each), and GC time is a
 * running total. Where API tails come from when the machine is busy: the process waiting for a
 * core, or its own loop blocked (long tasks, garbage collection).
 */
async function gatewayLoop(stack: Stack): Promise<{ p50: number; p99: number; max: number; gc: number }> {
  const text = await (await fetch(`${stack.url}/metrics`)).text();
  const sum = (re: RegExp) => [...text.matchAll(re)].reduce((a, m) => a + Number(m[1]), 0);
  const lagMs = (name: string) => 1000 * sum(new RegExp(`^streamspace_gateway_nodejs_eventloop_lag_${name}_seconds (\\S+)$`, 'gm'));
  return { p50: lagMs('p50'), p99: lagMs('p99'), max: lagMs('max'), gc: 1000 * sum(/^streamspace_gateway_nodejs_gc_duration_seconds_sum\{[^}]*\} (\S+)$/gm) };
}

/**
 * The worker's counters from its /metrics (WORKER_METRICS_PORT; ours and the Temporal SDK's), summed
 * over labels: counters by name, histograms by their `_count`. Per operation, what a phase cost in
 * workflow tasks, activities, requests to Temporal and sticky-cache misses.
 */
async function workerCounters(ports: number[]): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const port of ports) {
    let text: string;
    try {
      text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    } catch {
      continue;
    }
    countInto(out, text);
  }
  return out;
}

function countInto(out: Map<string, number>, text: string): void {
  const types = new Map<string, string>();
  for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) types.set(m[1], m[2]);
  for (const m of text.matchAll(/^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? (\S+)$/gm)) {
    const [name, value] = [m[1], Number(m[2])];
    const counted = types.get(name) === 'counter' || (name.endsWith('_count') && types.get(name.slice(0, -6)) === 'histogram');
    if (counted && !name.startsWith('streamspace_worker_nodejs') && !name.startsWith('streamspace_worker_process')) out.set(name, (out.get(name) ?? 0) + value);
  }
}

/** threadCpuSeconds of several processes, summed by key (thread ids are unique across processes). */
function threadCpuOf(pidList: number[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const pid of pidList) for (const [k, v] of threadCpuSeconds(pid)) out.set(k, (out.get(k) ?? 0) + v);
  return out;
}

async function countInState(stack: Stack, state: string): Promise<number> {
  return Number((await stack.pool.query<{ n: string }>('SELECT count(*) AS n FROM sessions WHERE state = $1', [state])).rows[0].n);
}

/**
 * The database's share of an operation, from pg_stat_statements (loaded by scripts/services.sh):
 * reset at a phase's start, then its heaviest statements (this database only) per operation
 * (SCALE_STATEMENTS of them, default 6).
 * reset() is false when the extension is not loaded (another PostgreSQL): the phase line says so.
 */
const statements = {
  async reset(stack: Stack): Promise<boolean> {
    try {
      await stack.pool.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
      await stack.pool.query('SELECT pg_stat_statements_reset()');
      return true;
    } catch {
      return false;
    }
  },
  async top(stack: Stack, n: number, k = env('SCALE_STATEMENTS', 6)): Promise<string> {
    const r = await stack.pool.query<{ calls: string; ms: number; query: string }>(
      `SELECT s.calls, s.total_exec_time AS ms, regexp_replace(s.query, '\\s+', ' ', 'g') AS query
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
        WHERE d.datname = current_database() AND s.query NOT ILIKE '%pg_stat_statements%'
        ORDER BY s.total_exec_time DESC`,
    );
    const calls = r.rows.reduce((a, x) => a + Number(x.calls), 0);
    const total = r.rows.reduce((a, x) => a + x.ms, 0);
    const lines = r.rows.slice(0, k).map((x) => `    ${(Number(x.calls) / n).toFixed(2)} calls/op, ${(x.ms / n).toFixed(3)} ms/op: ${x.query.slice(0, 140)}`);
    return [
      `  statements: ${(calls / n).toFixed(1)} per op, ${(total / n).toFixed(2)} ms execution per op (${r.rows.length} distinct); heaviest:`,
      ...lines,
    ].join('\n');
  },
};

/** Reads the list and single sessions at a steady pace while a phase runs, from its own process (bench/prober.ts). */
function prober(stack: Stack, admin: string) {
  const child = fork(path.join(__dirname, 'prober.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  type Probed = { list: number[]; deep: number[]; get: number[]; cpuSeconds: number };
  const result = new Promise<Probed>((resolve, reject) => {
    child.once('message', (m) => resolve(m as Probed));
    child.once('exit', (code) => reject(new Error(`prober exited with ${code} before reporting`)));
  });
  child.send({ url: stack.url, token: admin });
  return {
    done: async () => {
      child.send('stop');
      return result;
    },
  };
}

export async function scaleBench(): Promise<Metric[]> {
  return withStack(NAME, {}, async (stack) => {
    const admin = await stack.login();
    const perAgent = Math.ceil(SESSIONS / AGENTS) + 2;

    // The real Docker agent first, so the sample lands on it (placement prefers the emptiest agent
    // once the fakes are there).
    // Its id is the run's (a crashed earlier run's containers are not counted as this agent's), and
    // its capacity is the sample: the rest goes to the fakes.
    await stack.startDockerAgent(`docker-scale-${stack.id}`, { MAX_SESSIONS: String(DOCKER_SAMPLE) });
    // Users: sessions are spread over them (as in a real tenant), each with its own token.
    const users: string[] = [];
    await mapLimit(
      Array.from({ length: USERS }, (_, i) => `scale-user-${i}`),
      8,
      async (u) => {
        const c = await stack.call('POST', '/api/v1/users', { username: u, password: 'scale-password-1' }, admin);
        if (c.status !== 201 && c.status !== 200) throw new Error(`create user ${u}: ${c.status} ${JSON.stringify(c.body)}`);
        users.push(await stack.login(u, 'scale-password-1'));
      },
    );

    const ids: string[] = [];
    const sample: string[] = [];
    for (let i = 0; i < DOCKER_SAMPLE; i++) {
      const r = await stack.call<{ id: string }>('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, users[i % users.length]);
      if (r.status !== 201) throw new Error(`sample create: ${r.status} ${JSON.stringify(r.body)}`);
      sample.push(r.body.id);
    }
    for (const id of sample) await stack.waitForState(admin, id, 'running', 180_000);
    log(NAME, `${sample.length} real desktops running on the Docker agent`);

    // The fake agents: tokens in one INSERT, then connected 50 at a time.
    const agentIds = Array.from({ length: AGENTS }, (_, i) => `fake-scale-${String(i).padStart(4, '0')}`);
    const tokens = await stack.agentTokensBulk(agentIds);
    const agentUrl = `ws://127.0.0.1:${stack.agentPort}`;
    const fakes = agentIds.map((id, i) => new FakeAgent(id, agentUrl, tokens[i], perAgent));
    const tc = now();
    await mapLimit(fakes, 50, (a) => a.connect(60_000));
    log(NAME, `${AGENTS} fake agents registered in ${(ms(tc) / 1000).toFixed(1)} s (capacity ${perAgent} each)`);

    // More workers: metrics on the ports after the first's (WORKER_METRICS_PORT, 9464 by default).
    const metricsPorts = [Number(process.env.WORKER_METRICS_PORT ?? 9464)];
    const extraWorkers: Proc[] = [];
    for (let i = 2; i <= WORKERS; i++) {
      metricsPorts.push(metricsPorts[0] + 10 + i);
      extraWorkers.push(await stack.startExtraWorker(`worker-${i}`, { WORKER_METRICS_PORT: String(metricsPorts[i - 1]) }));
    }
    if (WORKERS > 1) log(NAME, `${WORKERS} workers on the task queue`);
    const workerPids = () => [stack.worker.child!.pid!, ...extraWorkers.map((w) => w.child!.pid!)];

    const groups = {
      gateway: new ProcGroup('gateway', () => [stack.api.child!.pid!]),
      worker: new ProcGroup('worker', workerPids),
      temporal: new ProcGroup('temporal', () => pids({ pattern: 'temporal server start-dev' })),
      postgres: new ProcGroup('postgres', () => pids({ user: 'postgres' })),
      redis: new ProcGroup('redis', () => pids({ pattern: 'redis-server' })),
    };

    const results: PhaseResult[] = [];
    const runPhase = async (op: Op): Promise<PhaseResult> => {
      const n = op === 'create' ? SESSIONS : ids.length + sample.length;
      const before = op === 'create' ? await countInState(stack, 'running') : 0;
      const counting = await statements.reset(stack);
      const loopBefore = await gatewayLoop(stack);
      const probe = prober(stack, admin);
      for (const g of Object.values(groups)) g.start();
      const machine0 = machineBusySeconds();
      const load0 = process.cpuUsage();
      const workerThreads = threadCpuOf(workerPids());
      const countersBefore = await workerCounters(metricsPorts);
      const calls: number[] = [];
      const failures: string[] = [];
      const t0 = now();
      const targets = op === 'create' ? Array.from({ length: SESSIONS }, (_, i) => i) : [...sample, ...ids].map((_, i) => i);
      const all = [...sample, ...ids];
      await mapLimit(targets, CONCURRENCY, async (i) => {
        const token = users[i % users.length];
        if (op === 'create') {
          const [r, t] = await call<{ id: string }>(stack, 'POST', '/api/v1/sessions', token, { template: 'terminal', platform: 'docker' });
          calls.push(t);
          if (r.status === 201) ids.push(r.body.id);
          else failures.push(`create: ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`);
        } else {
          const id = all[i];
          const [r, t] =
            op === 'stop'
              ? await call(stack, 'DELETE', `/api/v1/sessions/${id}?wait=60`, admin)
              : await call(stack, 'POST', `/api/v1/sessions/${id}/${op}?wait=60`, admin);
          calls.push(t);
          if (r.status !== 200 && r.status !== 202) failures.push(`${op} ${id}: ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`);
        }
      });
      // Done when the database shows every session in the target state.
      const want = op === 'create' ? before + SESSIONS : n;
      const deadline = Date.now() + PHASE_TIMEOUT_MS;
      let have = 0;
      while ((have = await countInState(stack, TARGET[op])) < want && Date.now() < deadline) await sleep(100);
      const seconds = ms(t0) / 1000;
      const probed = await probe.done();
      const machine = machineBusySeconds() - machine0;
      const load = process.cpuUsage(load0);
      const loop = await gatewayLoop(stack);
      const threads = threadSplit(workerThreads, threadCpuOf(workerPids()));
      const countersAfter = await workerCounters(metricsPorts);
      const cpu: Record<string, number> = {};
      const rss: Record<string, number> = {};
      for (const [k, g] of Object.entries(groups)) {
        cpu[k] = g.cpu();
        rss[k] = g.peakRssMb;
        g.stop();
      }
      if (have < want) failures.push(`${want - have} of ${want} not ${TARGET[op]} after ${PHASE_TIMEOUT_MS / 1000} s`);
      const r: PhaseResult = { op, n: want - before, seconds, failures, calls, list: probed.list, deep: probed.deep, get: probed.get, cpu, rss };
      const total = Object.values(cpu).reduce((a, b) => a + b, 0);
      log(
        NAME,
        `${op}: ${r.n} in ${seconds.toFixed(1)} s = ${(r.n / seconds).toFixed(0)}/s; call ${fmtP(calls)}; list ${fmtP(probed.list)}; deep page ${fmtP(probed.deep)}; get ${fmtP(probed.get)}; ` +
          `CPU s: ${Object.entries(cpu)
            .map(([k, v]) => `${k} ${v.toFixed(1)}`)
            .join(', ')} (total ${total.toFixed(1)} = ${((1000 * total) / r.n).toFixed(1)} ms/op); RSS MB: ${Object.entries(rss)
            .map(([k, v]) => `${k} ${v.toFixed(0)}`)
            .join(', ')}${failures.length ? `; ${failures.length} failures, first: ${failures[0]}` : ''}`,
      );
      log(
        NAME,
        `  gateway event loop: delay p50 ${loop.p50.toFixed(1)} ms, p99 ${loop.p99.toFixed(1)} ms, max ${loop.max.toFixed(0)} ms; garbage collection ${(loop.gc - loopBefore.gc).toFixed(0)} ms in ${seconds.toFixed(1)} s`,
      );
      // The machine is shared with the load: this process (the clients and the fake agents) and the prober.
      const loadSeconds = (load.user + load.system) / 1e6;
      log(
        NAME,
        `  machine: ${(machine / seconds).toFixed(2)} of ${cpus().length} cores busy; load generator (${CONCURRENCY} clients, ${AGENTS} fake agents) ${loadSeconds.toFixed(1)} CPU-s = ${((1000 * loadSeconds) / r.n).toFixed(1)} ms/op, prober ${probed.cpuSeconds.toFixed(1)} CPU-s`,
      );
      // Where the worker's CPU goes: its main thread (activities, the SDK's bridge), the workflow
      // thread (workflow code), the Temporal Core SDK's threads (workflow-processing: its state
      // machines; tokio-runtime-w: its gRPC), V8's helpers (garbage collection).
      log(NAME, `  worker CPU by thread, ms/op: ${threads.map(([k, v]) => `${k} ${((1000 * v) / r.n).toFixed(1)}`).join(', ')}`);
      const counted = [...countersAfter]
        .map(([k, v]) => [k, (v - (countersBefore.get(k) ?? 0)) / r.n] as const)
        .filter(([, v]) => v >= 0.01)
        .sort((a, b) => b[1] - a[1]);
      log(NAME, `  worker counters per op: ${counted.map(([k, v]) => `${k.replace(/^temporal_/, '')} ${v.toFixed(2)}`).join(', ') || 'none (no /metrics)'}`);
      log(NAME, counting ? await statements.top(stack, r.n) : '  statements: pg_stat_statements is not loaded in this PostgreSQL');
      return r;
    };

    for (const op of ['create', 'hibernate', 'wake', 'stop'] as Op[]) results.push(await runPhase(op));

    // Nothing lost: every session ended, no fake agent holds anything, the sample's containers are gone.
    await sleep(2000);
    const notEnded = Number((await stack.pool.query<{ n: string }>(`SELECT count(*) AS n FROM sessions WHERE state <> 'terminated'`)).rows[0].n);
    const leftContainers = (await stack.containers()).filter((c) => sample.includes(c.Labels['io.streamspace.session-id'])).length;
    const duplicates = fakes.flatMap((a) => a.duplicates());
    const commands = Number((await stack.pool.query<{ n: string }>('SELECT count(*) AS n FROM agent_commands')).rows[0].n);
    const dupRows = Number(
      (
        await stack.pool.query<{ n: string }>(
          `SELECT count(*) AS n FROM (SELECT session_id, generation FROM agent_commands GROUP BY 1, 2 HAVING count(*) > 1) d`,
        )
      ).rows[0].n,
    );
    const workerPeak = Math.max(...results.map((r) => r.rss.worker));
    const gatewayPeak = Math.max(...results.map((r) => r.rss.gateway));
    for (const a of fakes) a.close();

    const rows: Metric[] = [];
    const p = (xs: number[], q: number) => summaryP(xs, q);
    for (const r of results) {
      const rate = r.n / r.seconds;
      const base = r.op === 'create' ? BASELINE.create : BASELINE.lifecycle;
      const total = Object.values(r.cpu).reduce((a, b) => a + b, 0);
      rows.push({
        metric: `scale ${r.op}: ${r.n} sessions`,
        ours: `${rate.toFixed(0)}/s (${(rate / 2).toFixed(0)}/s per core; ${(rate / base).toFixed(1)}× baseline); call p50 ${fmtMs(p(r.calls, 50))} p99 ${fmtMs(p(r.calls, 99))}; ${((1000 * total) / r.n).toFixed(1)} CPU-ms/op (gateway ${((1000 * r.cpu.gateway) / r.n).toFixed(1)}, worker ${((1000 * r.cpu.worker) / r.n).toFixed(1)})${r.failures.length ? `; ${r.failures.length} FAILED` : ''}`,
        target: r.op === 'create' ? '≥ 3× per core' : '≥ 3× per core (≥ 120/s on 2 cores)',
        peer: `previous release: ${base}/s (1,000 sessions)`,
      });
      rows.push({
        metric: `scale ${r.op}: API under load`,
        ours: `list(100) p50 ${fmtMs(p(r.list, 50))} p99 ${fmtMs(p(r.list, 99))}; deep page p99 ${fmtMs(p(r.deep, 99))}; get p50 ${fmtMs(p(r.get, 50))} p99 ${fmtMs(p(r.get, 99))}`,
        target: 'list and get p99 < 100 ms',
        peer: `previous release: list p99 ${BASELINE.listP99} ms (1,054 rows unpaged)`,
      });
    }
    rows.push({
      metric: 'scale: memory peak',
      ours: `worker ${workerPeak.toFixed(0)} MB, gateway ${gatewayPeak.toFixed(0)} MB (${SESSIONS} sessions, ${AGENTS} agents)`,
      target: 'worker bounded',
      peer: `previous release: worker ${BASELINE.workerMb} MB at 1,000 sessions`,
    });
    rows.push({
      metric: 'scale: lost / duplicated',
      ours: `${notEnded} sessions not terminated, ${leftContainers} sample containers left; ${duplicates.length} operations sent twice to an agent, ${dupRows} duplicate command rows (${commands} commands)`,
      target: '0 / 0',
      peer: '',
    });
    if (notEnded || leftContainers || duplicates.length || dupRows || results.some((r) => r.failures.length)) {
      log(NAME, 'FAILED: operations lost, duplicated or failed (see the table)');
      process.exitCode = 1;
    }
    return rows;
  });
}

function summaryP(xs: number[], q: number): number {
  if (!xs.length) return NaN;
  if (q === 50) return summarize(xs).p50;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((q / 100) * s.length) - 1)];
}

const fmtP = (xs: number[]) => `p50 ${fmtMs(summaryP(xs, 50))} p99 ${fmtMs(summaryP(xs, 99))} (n=${xs.length})`;
