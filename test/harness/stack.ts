/**
 * Starts the real control plane for a test: its own database, its own Temporal task queue, the
 * gateway and the worker as child processes (so tests can kill them), and Docker agents.
 * Everything listens on 127.0.0.1. Logs go to test-artifacts/logs/<test>/.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import Docker from 'dockerode';
import { Client as PgClient, Pool } from 'pg';
import { Client as TemporalClient, Connection } from '@temporalio/client';
import { hashAgentToken } from '../../api/auth/agent-credentials';
import { TokenService } from '../../api/auth/tokens';
import { migrate } from '../../db/migrate';
import { dbUrl, TEST_ENV } from './env';

/** The repository root (the folder with package.json), from the sources or from dist/. */
export const ROOT = (() => {
  let dir = __dirname;
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
})();
/**
 * The gateway's Node flags as it ships (Dockerfile CMD, docker-compose.yml, Helm, deploy/kubernetes,
 * scripts/dev.sh; helm.test checks the chart's), for the stacks here and the relay bench's gateway
 * hop: a 64 MB young generation, so the relay's short-lived buffers die young instead of being
 * promoted and marked by a mark-compact every few hundred ms (2026-11-28: 500 viewers' p99 about
 * 24 → 10 ms).
 */
export const GATEWAY_NODE_FLAGS = ['--max-semi-space-size=64'];

const JWT_SECRET = 'test-secret-' + randomBytes(8).toString('hex');
const AGENT_SECRET = 'agent-secret-' + randomBytes(8).toString('hex');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | null | false>, timeoutMs = 60_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await sleep(everyMs);
  }
}

export class Proc {
  child: ChildProcess | null = null;
  /** Everything the process printed (all runs), for assertions on earlier log lines. */
  output = '';
  constructor(
    readonly name: string,
    readonly script: string,
    readonly env: NodeJS.ProcessEnv,
    readonly logDir: string,
    /** Node flags this process is started with (as its manifest's command gives them). */
    readonly nodeFlags: string[] = [],
  ) {}

  start(): this {
    const out = createWriteStream(path.join(this.logDir, `${this.name}.log`), { flags: 'a' });
    out.write(`--- start ${new Date().toISOString()}\n`);
    // STACK_NODE_ARGS: extra node flags for every process of the stack (e.g. --cpu-prof, to profile a bench).
    const nodeArgs = (process.env.STACK_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const child = spawn(process.execPath, [...this.nodeFlags, ...nodeArgs, path.join(ROOT, 'dist', this.script)], {
      env: { ...process.env, ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.pipe(out, { end: false });
    child.stderr!.pipe(out, { end: false });
    const keep = (d: Buffer) => {
      this.output = (this.output + d.toString()).slice(-1_000_000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.child = child;
    return this;
  }

  /** Waits until the process prints a line matching re. */
  waitForLog(re: RegExp, timeoutMs = 30_000): Promise<void> {
    const child = this.child!;
    return new Promise((resolve, reject) => {
      let buf = '';
      const t = setTimeout(() => reject(new Error(`${this.name}: no log line ${re} within ${timeoutMs} ms`)), timeoutMs);
      const onData = (d: Buffer) => {
        buf += d.toString();
        if (re.test(buf)) {
          clearTimeout(t);
          child.stdout!.off('data', onData);
          child.stderr!.off('data', onData);
          resolve();
        }
      };
      child.stdout!.on('data', onData);
      child.stderr!.on('data', onData);
      child.once('exit', (code) => {
        clearTimeout(t);
        reject(new Error(`${this.name} exited with ${code} before logging ${re}`));
      });
    });
  }

  /** Sends a signal without waiting (SIGSTOP/SIGCONT freeze and thaw a process). */
  signal(sig: NodeJS.Signals): void {
    this.child?.kill(sig);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill(signal);
      setTimeout(() => child.kill('SIGKILL'), 5000).unref();
    });
    this.child = null;
  }
}

export interface ApiResponse<T = any> {
  status: number;
  body: T;
}

/** A second (third, ...) gateway process of a Stack: see Stack.startApiPod. */
export interface ApiPod {
  name: string;
  proc: Proc;
  port: number;
  agentPort: number;
  podId: string;
  /** http://127.0.0.1:<port> */
  url: string;
  /** ws://127.0.0.1:<agentPort>: CONTROL_PLANE_URL for agents held by this pod. */
  agentUrl: string;
}

export class Stack {
  readonly id = randomBytes(4).toString('hex');
  readonly dbName = `ss_e2e_${this.id}`;
  readonly databaseUrl = dbUrl(this.dbName);
  readonly taskQueue = `streamspace-test-${this.id}`;
  readonly tokens = new TokenService(JWT_SECRET, AGENT_SECRET, 3600);
  readonly docker = new Docker({ socketPath: TEST_ENV.dockerHost.replace('unix://', '') });
  readonly logDir: string;
  api!: Proc;
  worker!: Proc;
  agents = new Map<string, Proc>();
  apiPort = 0;
  agentPort = 0;
  pool!: Pool;
  temporal!: TemporalClient;
  private temporalConnection!: Connection;

  constructor(
    readonly testName: string,
    readonly extraEnv: NodeJS.ProcessEnv = {},
  ) {
    this.logDir = path.join(ROOT, 'test-artifacts', 'logs', `${testName}-${this.id}`);
    mkdirSync(this.logDir, { recursive: true });
  }

  get url(): string {
    return `http://127.0.0.1:${this.apiPort}`;
  }

  get commonEnv(): NodeJS.ProcessEnv {
    return {
      DATABASE_URL: this.databaseUrl,
      TEMPORAL_ADDRESS: TEST_ENV.temporalAddress,
      TEMPORAL_TASK_QUEUE: this.taskQueue,
      JWT_SECRET,
      AGENT_TOKEN_SECRET: AGENT_SECRET,
      DEFAULT_SESSION_IMAGE: TEST_ENV.sessionImage,
      LOG_LEVEL: 'info',
      // Explicit dev mode: test secrets are short and the admin is bootstrapped as admin/admin.
      STREAMSPACE_DEV_MODE: 'true',
      ...this.extraEnv,
    };
  }

  /**
   * Creates the stack's database (unless `existingDatabase`: the test made it already, e.g. a v1
   * install, under this.dbName), applies the migrations, starts the gateway and the worker.
   */
  async start(opts: { worker?: boolean; existingDatabase?: boolean } = {}): Promise<this> {
    if (!opts.existingDatabase) {
      const admin = new PgClient({ connectionString: TEST_ENV.pgAdminUrl });
      await admin.connect();
      await admin.query(`CREATE DATABASE ${this.dbName}`);
      await admin.end();
    }
    await migrate(this.databaseUrl, { log: () => undefined });
    this.pool = new Pool({ connectionString: this.databaseUrl, max: 5 });
    this.apiPort = await freePort();
    this.agentPort = await freePort();
    this.api = new Proc(
      'api',
      'api/main.js',
      { ...this.commonEnv, PORT: String(this.apiPort), AGENT_WS_PORT: String(this.agentPort), HOST: '127.0.0.1' },
      this.logDir,
      GATEWAY_NODE_FLAGS,
    ).start();
    await this.api.waitForLog(/Server started/);
    if (opts.worker !== false) await this.startWorker();
    this.temporalConnection = await Connection.connect({ address: TEST_ENV.temporalAddress });
    this.temporal = new TemporalClient({ connection: this.temporalConnection });
    return this;
  }

  async startWorker(): Promise<void> {
    this.worker = new Proc('worker', 'workers/main.js', this.commonEnv, this.logDir).start();
    await this.worker.waitForLog(/Worker started/);
  }

  async restartApi(): Promise<void> {
    await this.api.kill('SIGKILL');
    this.api.start();
    await this.api.waitForLog(/Server started/);
  }

  private readonly agentTokens = new Map<string, string>();

  /**
   * A recorded agent token for agentId (one per agent id per stack, minted on first use): signed
   * with the stack's AGENT_TOKEN_SECRET and written to agent_tokens, as the API and
   * `npm run agent-token` do. Synchronous (psql) so callers can use it inline; needs start().
   */
  agentToken(agentId: string): string {
    const known = this.agentTokens.get(agentId);
    if (known) return known;
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(agentId)) throw new Error(`invalid agent id ${agentId}`);
    const id = randomUUID();
    const token = this.tokens.signAgent(agentId, { tokenId: id });
    execFileSync(
      'psql',
      [
        this.databaseUrl,
        '-qAt',
        '-v',
        'ON_ERROR_STOP=1',
        '-c',
        `INSERT INTO agent_tokens (id, agent_id, token_hash, description, created_by) VALUES ('${id}', '${agentId}', '${hashAgentToken(token)}', 'test harness', 'test-harness')`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.agentTokens.set(agentId, token);
    return token;
  }

  /** agentToken for many agents at once: one INSERT (a bench's thousand fake agents). */
  async agentTokensBulk(agentIds: string[]): Promise<string[]> {
    const rows = agentIds
      .filter((a) => !this.agentTokens.has(a))
      .map((agentId) => {
        if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(agentId)) throw new Error(`invalid agent id ${agentId}`);
        const id = randomUUID();
        const token = this.tokens.signAgent(agentId, { tokenId: id });
        this.agentTokens.set(agentId, token);
        return { id, agentId, hash: hashAgentToken(token) };
      });
    if (rows.length)
      await this.pool.query(
        `INSERT INTO agent_tokens (id, agent_id, token_hash, description, created_by)
         SELECT id, agent_id, token_hash, 'test harness', 'test-harness' FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(id, agent_id, token_hash)`,
        [rows.map((r) => r.id), rows.map((r) => r.agentId), rows.map((r) => r.hash)],
      );
    return agentIds.map((a) => this.agentTokens.get(a)!);
  }

  /** What every docker-platform agent of the stack gets: identity, credential, control plane. */
  private dockerAgentEnv(agentId: string, env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
    return {
      ...this.commonEnv,
      AGENT_ID: agentId,
      AGENT_TOKEN: env.AGENT_TOKEN ?? this.agentToken(agentId),
      CONTROL_PLANE_URL: `ws://127.0.0.1:${this.agentPort}`,
      PLATFORM: 'docker',
      REGION: 'local',
    };
  }

  /** Starts (or restarts) a Docker agent with host networking on loopback VNC ports. */
  async startDockerAgent(agentId: string, env: NodeJS.ProcessEnv = {}, waitRegistered = true): Promise<Proc> {
    let proc = this.agents.get(agentId);
    if (!proc) {
      proc = new Proc(
        `agent-${agentId}`,
        'agents/docker/main.js',
        {
          ...this.dockerAgentEnv(agentId, env),
          DOCKER_NETWORK: 'host',
          NETWORK_PREFIX: `sst${this.id}`,
          VNC_LISTEN: '127.0.0.1',
          VNC_PORT_RANGE: env.VNC_PORT_RANGE ?? '15900-15999',
          // Every API pod of a test stack listens on 127.0.0.1 (a second pod's AGENT_STREAM_URL is
          // another port there); test/security/agent-credentials.test.ts checks the strict default.
          AGENT_STREAM_HOSTS: '127.0.0.1',
          HEALTH_PORT: '0',
          MAX_SESSIONS: '50',
          ...env,
        },
        this.logDir,
      );
      this.agents.set(agentId, proc);
    }
    proc.start();
    if (waitRegistered) await proc.waitForLog(/registered successfully/);
    return proc;
  }

  /** Processes started by startApiPod / startExtraWorker (stopped by stop()). */
  readonly extraProcs: Proc[] = [];

  /**
   * Starts another gateway process (an API pod) on the stack's database and Temporal queue, with its
   * own HTTP and agent ports and POD_ID. For several pods to share agents, create the Stack with
   * AGENT_HUB_BACKEND=redis and REDIS_URL (TEST_ENV.redisUrl) in its extraEnv, as multi-pod.test.ts
   * does. Restart it with `pod.proc.kill('SIGKILL'); pod.proc.start(); await pod.proc.waitForLog(/Server started/)`
   * (same ports).
   */
  async startApiPod(name = 'api-2', env: NodeJS.ProcessEnv = {}): Promise<ApiPod> {
    const port = await freePort();
    const agentPort = await freePort();
    const podId = `${name}-${this.id}`;
    const proc = new Proc(
      name,
      'api/main.js',
      {
        ...this.commonEnv,
        PORT: String(port),
        AGENT_WS_PORT: String(agentPort),
        HOST: '127.0.0.1',
        POD_ID: podId,
        // Agents dial VNC streams for browsers on this pod straight back to it.
        AGENT_STREAM_URL: `ws://127.0.0.1:${agentPort}`,
        ...env,
      },
      this.logDir,
      GATEWAY_NODE_FLAGS,
    ).start();
    this.extraProcs.push(proc);
    await proc.waitForLog(/Server started/);
    return { name, proc, port, agentPort, podId, url: `http://127.0.0.1:${port}`, agentUrl: `ws://127.0.0.1:${agentPort}` };
  }

  /** Starts another worker process on the stack's task queue (metrics on a free port), with `nodeFlags` on its command line. */
  async startExtraWorker(name = 'worker-2', env: NodeJS.ProcessEnv = {}, nodeFlags: string[] = []): Promise<Proc> {
    const proc = new Proc(name, 'workers/main.js', { ...this.commonEnv, WORKER_METRICS_PORT: '0', ...env }, this.logDir, nodeFlags).start();
    this.extraProcs.push(proc);
    await proc.waitForLog(/Worker started/);
    return proc;
  }

  /** The JSON-lines events file of fake agent agentId ({at, agent, session, generation, event}). */
  fakeEventsFile(agentId: string): string {
    return path.join(this.logDir, `fake-${agentId}.events.jsonl`);
  }

  /** The state file of fake agent agentId (its "containers", kept across its restarts). */
  fakeStateFile(agentId: string): string {
    return path.join(this.logDir, `fake-${agentId}.state.json`);
  }

  /** The command journal directory of agent agentId (kept across its restarts). */
  agentStateDir(agentId: string): string {
    return path.join(this.logDir, `agent-state-${agentId}`);
  }

  /**
   * Starts (or restarts, with the same AGENT_ID, journal, state and events files) a fake agent:
   * dist/agents/fake/main.js registering as a docker agent, without containers. Waits for its
   * registration. env overrides anything (e.g. CONTROL_PLANE_URL for a second pod, MAX_SESSIONS,
   * FAKE_START_DELAY, AGENT_STATE_DIR=none).
   */
  async startFakeAgent(agentId: string, env: NodeJS.ProcessEnv = {}): Promise<Proc> {
    let proc = this.agents.get(agentId);
    if (!proc) {
      const stateDir = this.agentStateDir(agentId);
      mkdirSync(stateDir, { recursive: true });
      proc = new Proc(
        `agent-${agentId}`,
        'agents/fake/main.js',
        {
          // A default the stack's own environment may set (console.test: slow enough to see "pending").
          FAKE_START_DELAY: '20ms',
          ...this.dockerAgentEnv(agentId, env),
          AGENT_STREAM_HOSTS: '127.0.0.1',
          HEALTH_PORT: '0',
          HEALTH_HOST: '127.0.0.1',
          MAX_SESSIONS: '50',
          AGENT_STATE_DIR: stateDir,
          FAKE_STATE_FILE: this.fakeStateFile(agentId),
          FAKE_EVENTS_FILE: this.fakeEventsFile(agentId),
          ...env,
        },
        this.logDir,
      );
      this.agents.set(agentId, proc);
    }
    proc.start();
    await proc.waitForLog(/registered successfully/);
    return proc;
  }

  /** Starts any agent process (e.g. a Kubernetes agent replica) with the stack's environment. */
  startAgentProcess(name: string, script: string, env: NodeJS.ProcessEnv): Proc {
    const proc = new Proc(name, script, { ...this.commonEnv, HEALTH_PORT: '0', ...env }, this.logDir);
    this.agents.set(name, proc);
    return proc.start();
  }

  async login(username = 'admin', password = 'admin'): Promise<string> {
    const r = await this.call('POST', '/api/v1/auth/login', { username, password });
    if (r.status !== 200) throw new Error(`login failed: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body.token;
  }

  async call<T = any>(method: string, urlPath: string, body?: unknown, token?: string, headers: Record<string, string> = {}): Promise<ApiResponse<T>> {
    const res = await fetch(this.url + urlPath, {
      method,
      headers: {
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
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

  async waitForState(token: string, sessionId: string, state: string, timeoutMs = 90_000): Promise<any> {
    return waitFor(
      `session ${sessionId} to be ${state}`,
      async () => {
        const r = await this.call('GET', `/api/v1/sessions/${sessionId}`, undefined, token);
        if (r.body?.state === 'failed' && state !== 'failed') throw new Error(`session failed: ${r.body.error}`);
        return r.body?.state === state ? r.body : undefined;
      },
      timeoutMs,
      100,
    );
  }

  /** Runs a shell command in a container (as its user) and returns stdout and stderr together. */
  async exec(containerId: string, cmd: string): Promise<string> {
    const e = await this.docker.getContainer(containerId).exec({ Cmd: ['bash', '-c', cmd], AttachStdout: true, AttachStderr: true });
    const stream = await e.start({});
    const chunks: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      stream.on('data', (d: Buffer) => chunks.push(d));
      stream.on('end', resolve);
      stream.on('error', reject);
    });
    // Docker multiplexes stdout/stderr with 8-byte frame headers.
    const raw = Buffer.concat(chunks);
    let out = '';
    for (let i = 0; i + 8 <= raw.length;) {
      const len = raw.readUInt32BE(i + 4);
      out += raw.subarray(i + 8, i + 8 + len).toString();
      i += 8 + len;
    }
    return out;
  }

  /** Containers this stack's agents created. */
  async containers(sessionId?: string): Promise<Docker.ContainerInfo[]> {
    const all = await this.docker.listContainers({ all: true, filters: { label: ['io.streamspace.managed=true'] } });
    return all.filter((c) => this.agents.has(c.Labels['io.streamspace.agent-id']) && (!sessionId || c.Labels['io.streamspace.session-id'] === sessionId));
  }

  /** Terminates this stack's running workflows (those on its task queue). */
  async terminateWorkflows(): Promise<void> {
    if (!this.temporal) return;
    for await (const wf of this.temporal.workflow.list({ query: `TaskQueue = '${this.taskQueue}' AND ExecutionStatus = 'Running'` }))
      await this.temporal.workflow
        .getHandle(wf.workflowId, wf.runId)
        .terminate('test stack stopped')
        .catch(() => undefined);
  }

  async stop(): Promise<void> {
    for (const a of this.agents.values()) await a.kill('SIGTERM');
    for (const p of this.extraProcs) await p.kill('SIGTERM');
    await this.worker?.kill('SIGTERM');
    await this.api?.kill('SIGTERM');
    for (const c of await this.containers().catch(() => []))
      await this.docker
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => undefined);
    const vols = await this.docker.listVolumes({ filters: { name: [`sst${this.id}-home-`] } }).catch(() => ({ Volumes: [] }));
    for (const v of vols.Volumes ?? [])
      await this.docker
        .getVolume(v.Name)
        .remove()
        .catch(() => undefined);
    // Workflow ids are namespace-wide: leave none of this stack's running behind to collide with a
    // later run's (a session or migration id reused by a deterministic fixture).
    await this.terminateWorkflows().catch(() => undefined);
    await this.temporalConnection?.close().catch(() => undefined);
    await this.pool?.end().catch(() => undefined);
    const admin = new PgClient({ connectionString: TEST_ENV.pgAdminUrl });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${this.dbName} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
  }
}
