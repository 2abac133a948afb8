/**
 * Issue 9, secrets are required: outside STREAMSPACE_DEV_MODE the built gateway, worker and agents
 * refuse to start, with one line naming the variable and a non-zero exit, when a secret is missing,
 * short, a published default, or (AGENT_TOKEN_SECRET) the same as JWT_SECRET; the gateway also
 * refuses the first bootstrap without a real ADMIN_PASSWORD. Dev mode is explicit and loud. The
 * shipped compose file, Dockerfile and manifests carry no secret values and no dev mode.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { Client as PgClient } from 'pg';
import { dbUrl, TEST_ENV } from '../harness/env';
import { freePort, ROOT } from '../harness/stack';

jest.setTimeout(120_000);

const STRONG = () => randomBytes(36).toString('base64');

interface Run {
  code: number | null;
  stderr: string;
  stdout: string;
}

/** Runs a built entry point with exactly `env` (plus PATH) until it exits or prints `until`. */
function run(script: string, env: NodeJS.ProcessEnv, until?: RegExp, timeoutMs = 60_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(ROOT, 'dist', script)], { env: { PATH: process.env.PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const check = () => {
      if (until && until.test(stdout + stderr)) child.kill('SIGTERM');
    };
    child.stdout.on('data', (d: Buffer) => ((stdout += d), check()));
    child.stderr.on('data', (d: Buffer) => ((stderr += d), check()));
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${script} neither exited nor printed ${until} within ${timeoutMs} ms:\n${stdout}\n${stderr}`));
    }, timeoutMs);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The refusal: exit ≠ 0 and exactly one line on stderr, naming `variable`. */
function expectRefused(r: Run, variable: string, why: RegExp = /./): void {
  expect(r.code).not.toBe(0);
  expect(r.code).not.toBeNull();
  const lines = r.stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/refusing to start/);
  expect(lines[0]).toContain(variable);
  expect(lines[0]).toMatch(why);
}

describe('secrets are required outside dev mode', () => {
  const dbName = `ss_e2e_secrets_${randomBytes(4).toString('hex')}`;
  const databaseUrl = dbUrl(dbName);
  const base = () => ({ DATABASE_URL: databaseUrl, TEMPORAL_ADDRESS: TEST_ENV.temporalAddress, HOST: '127.0.0.1', AGENT_WS_PORT: '0', LOG_LEVEL: 'info' });

  beforeAll(async () => {
    const admin = new PgClient({ connectionString: TEST_ENV.pgAdminUrl });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${dbName}`);
    await admin.end();
  });
  afterAll(async () => {
    const admin = new PgClient({ connectionString: TEST_ENV.pgAdminUrl });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
  });

  test('gateway: JWT_SECRET missing, short or a published default; AGENT_TOKEN_SECRET missing or equal to it', async () => {
    const jwt = STRONG();
    expectRefused(await run('api/main.js', { ...base(), AGENT_TOKEN_SECRET: STRONG() }), 'JWT_SECRET', /must be set/);
    expectRefused(await run('api/main.js', { ...base(), JWT_SECRET: 'short-secret', AGENT_TOKEN_SECRET: STRONG() }), 'JWT_SECRET', /at least 32 bytes/);
    expectRefused(
      await run('api/main.js', { ...base(), JWT_SECRET: 'streamspace-dev-secret-change-me', AGENT_TOKEN_SECRET: STRONG() }),
      'JWT_SECRET',
      /published default/,
    );
    expectRefused(await run('api/main.js', { ...base(), JWT_SECRET: jwt }), 'AGENT_TOKEN_SECRET', /must be set/);
    expectRefused(await run('api/main.js', { ...base(), JWT_SECRET: jwt, AGENT_TOKEN_SECRET: jwt }), 'AGENT_TOKEN_SECRET', /must differ from JWT_SECRET/);
    // Without DATABASE_URL the database password must be given (no built-in default).
    const noUrl = { ...base(), DATABASE_URL: '', JWT_SECRET: jwt, AGENT_TOKEN_SECRET: STRONG() };
    expectRefused(await run('api/main.js', noUrl), 'DB_PASSWORD', /must be set/);
    expectRefused(await run('api/main.js', { ...noUrl, DB_PASSWORD: 'streamspace' }), 'DB_PASSWORD', /published default/);
    // STREAMSPACE_DEV_MODE must be explicit: a typo is not dev mode.
    expectRefused(await run('api/main.js', { ...base(), STREAMSPACE_DEV_MODE: 'maybe' }), 'STREAMSPACE_DEV_MODE');
  });

  test('gateway: the first bootstrap needs a real ADMIN_PASSWORD; then it starts, and never needs it again', async () => {
    const env = { ...base(), JWT_SECRET: STRONG(), AGENT_TOKEN_SECRET: STRONG() };
    expectRefused(await run('api/main.js', { ...env, PORT: String(await freePort()) }), 'ADMIN_PASSWORD', /no admin user exists yet/);
    expectRefused(await run('api/main.js', { ...env, PORT: String(await freePort()), ADMIN_PASSWORD: 'admin' }), 'ADMIN_PASSWORD', /published default/);
    expectRefused(await run('api/main.js', { ...env, PORT: String(await freePort()), ADMIN_PASSWORD: 'short-pw' }), 'ADMIN_PASSWORD', /at least 12/);
    const pg = new PgClient({ connectionString: databaseUrl });
    await pg.connect();
    expect((await pg.query(`SELECT count(*)::int AS n FROM users`)).rows[0].n).toBe(0); // refusals changed nothing

    const started = await run('api/main.js', { ...env, PORT: String(await freePort()), ADMIN_PASSWORD: 'a-long-admin-password' }, /Server started/);
    expect(started.stdout + started.stderr).toMatch(/Server started/);
    expect(started.stderr).not.toMatch(/STREAMSPACE_DEV_MODE/);
    expect((await pg.query(`SELECT username, role, password_hash FROM users`)).rows).toEqual([
      { username: 'admin', role: 'admin', password_hash: expect.stringMatching(/^scrypt\$/) },
    ]);
    await pg.end();
    const again = await run('api/main.js', { ...env, PORT: String(await freePort()) }, /Server started/);
    expect(again.stdout).toMatch(/Server started/);
  });

  test('worker: refuses without its database password', async () => {
    const env = { TEMPORAL_ADDRESS: TEST_ENV.temporalAddress, DB_HOST: '127.0.0.1', DB_PORT: '55432' };
    expectRefused(await run('workers/main.js', env), 'DB_PASSWORD', /must be set/);
    expectRefused(await run('workers/main.js', { ...env, DB_PASSWORD: 'streamspace' }), 'DB_PASSWORD', /published default/);
  });

  test('agents: refuse without AGENT_TOKEN (or with a placeholder)', async () => {
    const env = { AGENT_ID: 'sec-agent', CONTROL_PLANE_URL: 'ws://127.0.0.1:9', HEALTH_PORT: '0' };
    expectRefused(await run('agents/docker/main.js', { ...env, PLATFORM: 'docker' }), 'AGENT_TOKEN', /must be set/);
    expectRefused(await run('agents/docker/main.js', { ...env, PLATFORM: 'docker', AGENT_TOKEN: 'change-me' }), 'AGENT_TOKEN', /published default/);
    expectRefused(await run('agents/kubernetes/main.js', { ...env, PLATFORM: 'kubernetes' }), 'AGENT_TOKEN', /must be set/);
  });

  test('dev mode is explicit and loud', async () => {
    const r = await run(
      'api/main.js',
      { ...base(), STREAMSPACE_DEV_MODE: 'true', PORT: String(await freePort()), DATABASE_URL: databaseUrl },
      /Server started/,
    );
    expect(r.stderr).toMatch(/WARNING: api runs in STREAMSPACE_DEV_MODE/);
    expect(r.stderr).toMatch(/JWT_SECRET must be set/);
  });

  test('shipped configurations: secrets from the environment or a Secret, never a literal, never dev mode', () => {
    const compose = readFileSync(path.join(ROOT, 'docker-compose.yml'), 'utf8');
    for (const v of ['JWT_SECRET', 'AGENT_TOKEN_SECRET', 'DB_PASSWORD']) expect(compose).toMatch(new RegExp(`${v}: \\$\\{${v}:\\?`));
    expect(compose).not.toMatch(/\$\{(JWT_SECRET|AGENT_TOKEN_SECRET|DB_PASSWORD|ADMIN_PASSWORD|AGENT_TOKEN|REDIS_PASSWORD):-[^}]/);
    expect(compose).not.toMatch(/STREAMSPACE_DEV_MODE/);
    // The worker gets no token keys: they are set on the control-plane service only.
    const worker = compose.slice(compose.indexOf('\n  worker:'), compose.indexOf('\n  docker-agent:'));
    expect(worker).not.toMatch(/JWT_SECRET|AGENT_TOKEN_SECRET/);
    expect(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8')).toMatch(/STREAMSPACE_DEV_MODE=false/);
    for (const f of ['control-plane.yaml', 'k8s-agent.yaml']) {
      const y = readFileSync(path.join(ROOT, 'deploy', 'kubernetes', f), 'utf8');
      expect(y).not.toMatch(/STREAMSPACE_DEV_MODE/);
      for (const m of y.matchAll(/name: (JWT_SECRET|AGENT_TOKEN_SECRET|DB_PASSWORD|ADMIN_PASSWORD|AGENT_TOKEN)\n\s+(\w+):/g))
        expect([m[1], m[2]]).toEqual([m[1], 'valueFrom']);
    }
  });
});
