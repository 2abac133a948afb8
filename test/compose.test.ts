/**
 * Issue 11, item 3: docker-compose.yml. No registry is reachable here, so the file is validated
 * (scripts/compose-check.ts: a compose CLI when installed, and always the built-in check), and
 * the same topology runs as processes from the same env file and the same per-service
 * environment and commands as the compose file: setup (schema migrations + temporal-setup),
 * agent-bootstrap (mints the agent token into a file), gateway, worker, Docker agent (token from
 * AGENT_TOKEN_FILE), outside dev mode. Only hosts, ports, the database role and names, the task
 * queue and the agent's networking are replaced by 127.0.0.1 ones (DOCKER_NETWORK=host: this
 * machine's Docker has no bridge). A `terminal` session then runs on the real Docker agent and stops.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { Client as PgClient } from 'pg';
import { Client as TemporalClient, Connection } from '@temporalio/client';
import { rfbGreeting } from '../agents/docker/driver';
import {
  checkCompose,
  checkStreamSpace,
  composeCli,
  ENV_FILE,
  interpolate,
  loadCompose,
  parseEnvFile,
  placeholderSecrets,
  runChecks,
  SECRETS,
  serviceEnv,
  type ComposeDoc,
} from '../scripts/compose-check';
import { TEST_ENV } from './harness/env';
import { freePort, Proc, ROOT, waitFor } from './harness/stack';

const run = promisify(execFile);

describe('docker-compose.yml validates', () => {
  test('npm run compose:check: the built-in check passes, and the compose CLI when one is installed', () => {
    const { ok, lines } = runChecks();
    const cli = composeCli();
    // Says which validator ran (Compose v2, Debian's docker-compose v1, or the built-in check only).
    console.log(`compose:check\n${lines.join('\n')}`);
    expect(lines.filter((l) => l.startsWith('FAIL'))).toEqual([]);
    expect(ok).toBe(true);
    if (cli) expect(lines.some((l) => l.includes('config -q') && l.startsWith('ok'))).toBe(true);
  });

  test('every secret is required, none has a default, and each reaches only its holders', () => {
    const { missing } = loadCompose({});
    expect(new Set(missing.map((m) => m.split(':')[0]))).toEqual(new Set(Object.keys(SECRETS)));
    // The env file holds no secret at all.
    const envFile = parseEnvFile(readFileSync(ENV_FILE, 'utf8'));
    for (const name of [...Object.keys(SECRETS), 'AGENT_TOKEN', 'DATABASE_URL', 'REDIS_URL']) expect(envFile[name]).toBeUndefined();
    expect(envFile.STREAMSPACE_DEV_MODE).toBe('false');
    expect(envFile.HOST).toBe('0.0.0.0');
  });

  test('the checks catch a broken file (no sessions network, secrets in the wrong place, typos, a dangling dependency)', () => {
    const secrets = placeholderSecrets();
    const fresh = (): ComposeDoc => loadCompose(secrets).doc;
    const broken: Array<[string, (d: ComposeDoc) => void, RegExp]> = [
      ['agent off the sessions network', (d) => (d.services['docker-agent'].networks = ['default']), /docker-agent is not on the sessions network/],
      [
        'JWT_SECRET given to the worker',
        (d) => ((d.services.worker.environment as Record<string, string>).JWT_SECRET = secrets.JWT_SECRET),
        /worker gets JWT_SECRET/,
      ],
      ['a misspelt key', (d) => (d.services.worker.depends_onn = {}), /services\.worker: unknown key depends_onn/],
      ['a dangling dependency', (d) => (d.services.worker.depends_on = { nosuch: { condition: 'service_started' } }), /no service nosuch/],
      ['an undeclared volume', (d) => d.services['docker-agent'].volumes!.push('nosuch:/x'), /named volume nosuch is not declared/],
      [
        'a build arg the Dockerfile lacks',
        (d) => ((d.services['session-image'].build as { args: Record<string, string> }).args.NOPE = 'x'),
        /NOPE is not an ARG/,
      ],
      [
        'service_healthy on a service without a healthcheck',
        (d) => (d.services.worker.depends_on = { setup: { condition: 'service_healthy' } }),
        /setup has no healthcheck/,
      ],
    ];
    expect(checkCompose(fresh())).toEqual([]);
    expect(checkStreamSpace(fresh(), secrets)).toEqual([]);
    for (const [what, breakIt, expected] of broken) {
      const d = fresh();
      breakIt(d);
      const problems = [...checkCompose(d), ...checkStreamSpace(d, secrets)];
      expect({ what, problems: problems.join('\n') }).toEqual({ what, problems: expect.stringMatching(expected) });
    }
  });

  test('interpolation follows Compose', () => {
    const missing: string[] = [];
    expect(interpolate('a${X}b$${Y}c${Z:-def}${E:-e}${E-f}$$', { X: '1', E: '' }, missing)).toBe('a1b${Y}cdefe$');
    expect(interpolate('${R:?set R}', {}, missing)).toBe('');
    expect(missing).toEqual(['R: set R']);
  });
});

describe('the compose topology as processes, from deploy/compose/streamspace.env', () => {
  const id = randomBytes(4).toString('hex');
  const dbName = `ss_compose_${id}`;
  const logDir = path.join(ROOT, 'test-artifacts', 'logs', `compose-${id}`);
  const docker = new Docker({ socketPath: TEST_ENV.dockerHost.replace('unix://', '') });
  const procs: Proc[] = [];
  const agentId = `compose-${id}`;
  let namespace = '';
  let taskQueue = '';

  afterAll(async () => {
    for (const p of procs.reverse()) await p.kill('SIGTERM');
    const mine = await docker.listContainers({ all: true, filters: { label: [`io.streamspace.agent-id=${agentId}`] } }).catch(() => []);
    for (const c of mine)
      await docker
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => undefined);
    const vols = await docker.listVolumes({ filters: { name: [`sscmp${id}-home-`] } }).catch(() => ({ Volumes: [] }));
    for (const v of vols.Volumes ?? [])
      await docker
        .getVolume(v.Name)
        .remove()
        .catch(() => undefined);
    if (namespace && taskQueue) {
      const connection = await Connection.connect({ address: TEST_ENV.temporalAddress }).catch(() => null);
      if (connection) {
        const client = new TemporalClient({ connection, namespace });
        for await (const wf of client.workflow.list({ query: `TaskQueue = '${taskQueue}' AND ExecutionStatus = 'Running'` }))
          await client.workflow
            .getHandle(wf.workflowId, wf.runId)
            .terminate('compose test done')
            .catch(() => undefined);
        await connection.close();
      }
    }
    const admin = new PgClient({ connectionString: TEST_ENV.pgAdminUrl });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
    await admin.query(`DROP ROLE IF EXISTS ${dbName}`).catch(() => undefined);
    await admin.end();
  });

  test('setup, agent-bootstrap, gateway, worker and Docker agent come up outside dev mode; a terminal session runs and stops', async () => {
    mkdirSync(logDir, { recursive: true });
    // The secrets a user's .env would hold (the test Redis has its own password).
    const secrets: Record<string, string> = {
      DB_PASSWORD: randomBytes(24).toString('hex'),
      TEMPORAL_DB_PASSWORD: randomBytes(24).toString('hex'),
      REDIS_PASSWORD: decodeURIComponent(new URL(TEST_ENV.redisUrl).password),
      JWT_SECRET: randomBytes(48).toString('base64'),
      AGENT_TOKEN_SECRET: randomBytes(48).toString('base64'),
      ADMIN_PASSWORD: `adm-${randomBytes(12).toString('hex')}`,
    };
    const { doc, missing } = loadCompose(secrets);
    expect(missing).toEqual([]);
    const fileEnv = parseEnvFile(readFileSync(ENV_FILE, 'utf8'));
    namespace = fileEnv.TEMPORAL_NAMESPACE;
    taskQueue = `streamspace-compose-${id}`;

    // The database as the postgres service would have it: its own role (a password that is not a
    // published default) owning the database.
    const admin = new PgClient({ connectionString: TEST_ENV.pgAdminUrl });
    await admin.connect();
    await admin.query(`CREATE ROLE ${dbName} LOGIN PASSWORD '${secrets.DB_PASSWORD}'`);
    await admin.query(`CREATE DATABASE ${dbName} OWNER ${dbName}`);
    await admin.end();

    const apiPort = await freePort();
    const agentPort = await freePort();
    const pgUrl = new URL(TEST_ENV.pgAdminUrl);
    // Loopback replacements for the compose network's hosts and ports; nothing else changes.
    const loopback: Record<string, string> = {
      DB_HOST: pgUrl.hostname,
      DB_PORT: pgUrl.port,
      DB_NAME: dbName,
      DB_USER: dbName,
      TEMPORAL_ADDRESS: TEST_ENV.temporalAddress,
      TEMPORAL_TASK_QUEUE: taskQueue,
      TEMPORAL_SETUP_WAIT: '30s',
      HOST: '127.0.0.1',
      PORT: String(apiPort),
      AGENT_WS_PORT: String(agentPort),
      CONTROL_PLANE_URL: `ws://127.0.0.1:${agentPort}`,
      AGENT_ID: agentId,
      AGENT_TOKEN_FILE: path.join(logDir, 'agent-token', 'token'),
      AGENT_STATE_DIR: path.join(logDir, 'agent-state'),
      DOCKER_HOST: TEST_ENV.dockerHost,
      DOCKER_NETWORK: 'host',
      VNC_LISTEN: '127.0.0.1',
      NETWORK_PREFIX: `sscmp${id}`,
      HEALTH_PORT: '0',
      HEALTH_HOST: '127.0.0.1',
      WORKER_METRICS_PORT: '0',
      WORKER_METRICS_HOST: '127.0.0.1',
    };
    mkdirSync(path.dirname(loopback.AGENT_TOKEN_FILE), { recursive: true });
    /** A service's environment from the compose file, with the loopback replacements; secrets it is not given are blanked. */
    const envFor = (service: string): NodeJS.ProcessEnv => {
      const env: NodeJS.ProcessEnv = serviceEnv(doc.services[service]);
      Object.assign(env, loopback);
      if (env.REDIS_URL) env.REDIS_URL = TEST_ENV.redisUrl;
      for (const s of [...Object.keys(SECRETS), 'AGENT_TOKEN', 'DATABASE_URL']) if (!(s in env)) env[s] = '';
      env.PATH = `${path.dirname(process.execPath)}:${process.env.PATH}`;
      return env;
    };
    expect(envFor('control-plane').STREAMSPACE_DEV_MODE).toBe('false');
    expect(envFor('worker').JWT_SECRET).toBe('');
    expect(envFor('docker-agent').AGENT_TOKEN_SECRET).toBe('');

    /** A one-shot service: its compose command, run here in the repository (the image's /app). */
    const oneShot = async (service: string): Promise<string> => {
      const [cmd, ...args] = [doc.services[service].command ?? []].flat();
      try {
        const r = await run(cmd, args, { cwd: ROOT, env: { ...process.env, ...envFor(service) }, timeout: 120_000 });
        return `${r.stdout}${r.stderr}`;
      } catch (err) {
        const e = err as { stdout?: string; stderr?: string; message: string };
        throw new Error(`${service} failed: ${e.message}\n${e.stdout ?? ''}${e.stderr ?? ''}`);
      }
    };
    /** A long-running service: `node [--flag ...] dist/<script>` as in its compose command, flags included. */
    const start = (service: string): Proc => {
      const cmd: string[] = [doc.services[service].command ?? []].flat();
      expect(cmd[0]).toBe('node');
      const script = cmd.findIndex((a, i) => i > 0 && !a.startsWith('-'));
      expect(cmd.slice(script + 1)).toEqual([]);
      expect(cmd[script]).toMatch(/^dist\//);
      const proc = new Proc(service, cmd[script].slice('dist/'.length), envFor(service), logDir, cmd.slice(1, script)).start();
      procs.push(proc);
      return proc;
    };

    // setup: schema migrations, then the namespace and search attributes; again: nothing to do.
    const setup1 = await oneShot('setup');
    expect(setup1).toMatch(/applied: v1\.0\.0-baseline, /);
    expect(setup1).toMatch(new RegExp(`namespace ${namespace}: (exists|registered)`));
    expect(setup1).toMatch(/search attributes: (added|all 6 present)/);
    const setup2 = await oneShot('setup');
    expect(setup2).toMatch(/applied: \(none\)/);
    expect(setup2).toMatch(new RegExp(`namespace ${namespace}: exists`));
    expect(setup2).toMatch(/search attributes: all 6 present/);

    // agent-bootstrap: mints the token into AGENT_TOKEN_FILE (0600), keeps it on the next run.
    expect(await oneShot('agent-bootstrap')).toMatch(/minted a token/);
    const token = readFileSync(loopback.AGENT_TOKEN_FILE, 'utf8').trim();
    expect(token.split('.')).toHaveLength(3);
    expect(statSync(loopback.AGENT_TOKEN_FILE).mode & 0o077).toBe(0);
    expect(await oneShot('agent-bootstrap')).toMatch(/keeping the token/);
    expect(readFileSync(loopback.AGENT_TOKEN_FILE, 'utf8').trim()).toBe(token);

    const api = start('control-plane');
    await api.waitForLog(/Server started/, 60_000);
    expect(api.output).not.toMatch(/STREAMSPACE_DEV_MODE/);
    const worker = start('worker');
    await worker.waitForLog(/Worker started/, 60_000);
    const agent = start('docker-agent');
    await agent.waitForLog(/registered successfully/, 60_000);
    expect(agent.output).not.toMatch(/AGENT_TOKEN_FILE .* cannot be read/);

    const url = `http://127.0.0.1:${apiPort}`;
    const call = async (method: string, p: string, body?: unknown, token?: string) => {
      const res = await fetch(url + p, {
        method,
        headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      return { status: res.status, body: (await res.json().catch(() => null)) as any };
    };
    // The admin from ADMIN_PASSWORD (first start); the published default does not work.
    expect((await call('POST', '/api/v1/auth/login', { username: 'admin', password: 'admin' })).status).toBe(401);
    const login = await call('POST', '/api/v1/auth/login', { username: fileEnv.ADMIN_USERNAME, password: secrets.ADMIN_PASSWORD });
    expect(login.status).toBe(200);
    const jwt: string = login.body.token;

    const created = await call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', state: 'running' }, jwt);
    expect(created.status).toBe(201);
    const sessionId: string = created.body.id;
    const running = await waitFor(
      `session ${sessionId} running`,
      async () => {
        const r = await call('GET', `/api/v1/sessions/${sessionId}`, undefined, jwt);
        if (r.body?.state === 'failed') throw new Error(`session failed: ${r.body.error}`);
        return r.body?.state === 'running' ? r.body : null;
      },
      120_000,
      200,
    );
    expect(running.agent_id).toBe(agentId);
    const [container] = await docker.listContainers({ filters: { label: [`io.streamspace.session-id=${sessionId}`] } });
    expect(container.State).toBe('running');
    expect(container.Image).toBe(fileEnv.DEFAULT_SESSION_IMAGE);
    expect(await rfbGreeting({ host: '127.0.0.1', port: Number(container.Labels['io.streamspace.vnc-port']) }, 5000)).toBe('RFB 003.008\n');

    // The workflow runs in the env file's namespace and is findable by the search attributes setup registered.
    const connection = await Connection.connect({ address: TEST_ENV.temporalAddress });
    try {
      const client = new TemporalClient({ connection, namespace });
      const found = await waitFor(
        'the session workflow by search attribute',
        async () => {
          const ids: string[] = [];
          for await (const wf of client.workflow.list({ query: `StreamSpaceSessionId = '${sessionId}'` })) ids.push(wf.workflowId);
          return ids.length ? ids : null;
        },
        30_000,
        500,
      );
      expect(found).toContain(`session/${sessionId}`);
    } finally {
      await connection.close();
    }

    const del = await call('DELETE', `/api/v1/sessions/${sessionId}?wait=30`, undefined, jwt);
    expect(del.status).toBe(200);
    expect(del.body.state).toBe('terminated');
    expect(await docker.listContainers({ all: true, filters: { label: [`io.streamspace.session-id=${sessionId}`] } })).toHaveLength(0);
  }, 300_000);
});
