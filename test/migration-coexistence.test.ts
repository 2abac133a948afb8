/**
 * Blue-green coexistence (issue 8, items 4 and 6): while the migration runs, a v1 writer (the
 * stand-in for the v1 API, writing as v1 does: test/harness/v1-install.ts's V1Writer) keeps
 * inserting and updating sessions for the users still routed to v1. After the full cut-over
 * every session v1 wrote is in v2, as v1 last wrote it; a rollback after v1 writes keeps them
 * (v1's tables over v1's columns equal a shadow database that received only v1's writes); the
 * worker running the rollback is never scaled down; restore-from-dump goes into a new database
 * and swaps it in; v1 CRDs deleted by decommission come back.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Redis from 'ioredis';
import { Client } from 'pg';
import { ROUTING_KEY, routeFor, RoutingState } from '../api/routing/state';
import { MigrationProgress } from '../workflows/migration-api';
import { TEST_ENV } from './harness/env';
import { KubeCluster, startKube } from './harness/kube';
import { ROOT, Stack, sleep, waitFor } from './harness/stack';
import { createV1Cluster, createV1Database, startFakeV1Api, V1_DEPLOYMENTS, V1_TEMPLATE_NAMES, V2_DEPLOYMENTS } from './harness/v1-fixture';
import { v1TableStates, V1Writer } from './harness/v1-install';

/** The database URL without its password: the worker reads the password from its own environment (V1_DATABASE_PASSWORD). */
const noPassword = (url: string): string => {
  const u = new URL(url);
  u.password = '';
  return u.toString();
};
const DB_SECRET_ENV = { V1_DATABASE_PASSWORD: decodeURIComponent(new URL(TEST_ENV.pgAdminUrl).password) };

jest.setTimeout(900_000);

const NOW = new Date('2025-06-01T12:00:00Z');
const SEED = 8;
const SESSIONS = 80;
const USERS = ['alice', 'bob', 'carol', 'erin'];

async function q<T = any>(url: string, sql: string, args: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql, args)).rows as T[];
  } finally {
    await c.end();
  }
}

async function v1ColumnsOf(url: string): Promise<Record<string, string[]>> {
  const rows = await q<{ t: string; c: string }>(
    url,
    `SELECT table_name AS t, column_name AS c FROM information_schema.columns WHERE table_schema = current_schema() AND table_name IN ('users', 'templates', 'sessions') ORDER BY table_name, ordinal_position`,
  );
  const out: Record<string, string[]> = {};
  for (const r of rows) (out[r.t] ??= []).push(r.c);
  return out;
}

/** Whole-row checksums (what the backup manifest records). */
async function wholeRowStates(url: string) {
  const out: Record<string, { count: number; checksum: string }> = {};
  for (const t of ['users', 'templates', 'sessions']) {
    const [r] = await q(
      url,
      `SELECT count(*)::int AS n, COALESCE(md5(string_agg(h, '' ORDER BY h)), '') AS sum FROM (SELECT md5(x::text) AS h FROM "${t}" x) y`,
    );
    out[t] = { count: r.n, checksum: r.sum };
  }
  return out;
}

/**
 * Writes like v1 for the users the routing still sends to v1: new sessions and state changes,
 * into the v1 database and (for the rollback test) the same writes into a shadow copy.
 */
class V1Traffic {
  readonly last = new Map<string, { user: string; state: string }>();
  private stopped = false;
  private loop: Promise<void> | null = null;
  private n = 0;
  constructor(
    private readonly writers: V1Writer[],
    private readonly redis: Redis,
    private readonly existing: Array<{ id: string; user: string; template: string }>,
  ) {}

  start(): void {
    this.loop = (async () => {
      while (!this.stopped) {
        const raw = await this.redis.get(ROUTING_KEY);
        const state = raw ? (JSON.parse(raw) as RoutingState) : null;
        const onV1 = USERS.filter((u) => !state || routeFor(state, u) === 'v1');
        if (onV1.length) {
          const user = onV1[this.n % onV1.length];
          const mine = [...this.existing.filter((s) => s.user === user)];
          const update = this.n % 2 === 1 && mine.length;
          const target = update
            ? mine[this.n % mine.length]
            : { id: `cx-${user}-${this.n}`, user, template: V1_TEMPLATE_NAMES[this.n % V1_TEMPLATE_NAMES.length] };
          const st = ['running', 'hibernated', 'terminated'][this.n % 3];
          for (const w of this.writers) await w.createSession({ id: target.id, userId: user, templateName: target.template, state: st }, NOW);
          this.last.set(target.id, { user, state: st });
          if (!update) this.existing.push(target);
        }
        this.n++;
        await sleep(25);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }
}

describe('v1 keeps writing during the blue-green migration', () => {
  const stack = new Stack('migration-coexist', { REDIS_URL: TEST_ENV.redisUrl, ...DB_SECRET_ENV });
  const redis = new Redis(TEST_ENV.redisUrl);
  const backupDir = path.join(ROOT, 'test-artifacts', 'migration-backups', stack.id);
  let cluster: KubeCluster;
  let v1k8s: Awaited<ReturnType<typeof createV1Cluster>>;
  let v1Api: Awaited<ReturnType<typeof startFakeV1Api>>;
  let kubeconfig: string;
  let admin: string;
  let bob: string;
  const dbs: Array<{ drop(): Promise<void> }> = [];
  const closers: Array<() => Promise<unknown>> = [];

  const v1Db = async (tag: string) => {
    const d = await createV1Database(TEST_ENV.pgAdminUrl, { name: `v1_${tag}_${stack.id}`, statusColumn: true, sessions: SESSIONS, seed: SEED, now: NOW });
    dbs.push(d);
    return d;
  };
  const options = (runId: string, url: string, extra: Record<string, unknown> = {}) => ({
    runId,
    strategy: 'blue-green',
    v1: {
      apiUrl: v1Api.url,
      databaseUrl: noPassword(url),
      databasePasswordRef: 'env:V1_DATABASE_PASSWORD',
      kubeconfig,
      namespaces: ['streamspace', 'workspaces'],
      deployments: Object.keys(V1_DEPLOYMENTS),
    },
    v2: { readyUrl: `${stack.url}/ready`, databaseUrlRef: 'env:DATABASE_URL', deployments: Object.keys(V2_DEPLOYMENTS), platforms: [] },
    backupDir,
    cohorts: [
      { name: 'pilot', users: ['alice'] },
      { name: 'beta', percent: 50 },
    ],
    approval: { mode: 'manual' },
    importBatchSize: 15,
    importPaceMs: 30,
    decommissionAfter: '1h',
    agentWaitTimeout: '1m',
    ...extra,
  });
  const start = async (opts: Record<string, unknown>) => {
    const r = await stack.call('POST', '/api/v1/migrations', opts, admin);
    expect(r.status).toBe(201);
    return r.body.runId as string;
  };
  const progress = async (runId: string): Promise<MigrationProgress> => (await stack.call('GET', `/api/v1/migrations/${runId}`, undefined, admin)).body;
  const until = (runId: string, what: string, pred: (p: MigrationProgress) => boolean, timeoutMs = 180_000) =>
    waitFor(
      what,
      async () => {
        const p = await progress(runId);
        if (p.status === 'blocked' && !what.includes('blocked')) throw new Error(`run blocked: ${p.blockedReason}`);
        return pred(p) ? p : undefined;
      },
      timeoutMs,
      100,
    );
  const route = async (token: string, p: string) => {
    const r = await fetch(`${stack.url}${p}`, { headers: { authorization: `Bearer ${token}` } });
    return { via: r.headers.get('x-streamspace-route') === 'v1' ? 'v1' : 'v2', status: r.status };
  };

  beforeAll(async () => {
    mkdirSync(backupDir, { recursive: true });
    cluster = await startKube();
    kubeconfig = path.join(stack.logDir, 'admin-kubeconfig.yaml');
    const seedDb = await v1Db('seed');
    v1k8s = await createV1Cluster(cluster.kubeconfig(), { sessions: seedDb.sessions });
    writeFileSync(kubeconfig, cluster.kubeconfig());
    v1Api = await startFakeV1Api();
    await stack.start();
    writeFileSync(kubeconfig, cluster.kubeconfig());
    admin = await stack.login();
    for (const u of ['alice', 'bob']) await stack.call('POST', '/api/v1/users', { username: u, password: `${u}-password` }, admin);
    bob = await stack.login('bob', 'bob-password');
    await redis.del(ROUTING_KEY);
  });

  // A failed case must not leave its routing behind.
  afterEach(async () => {
    await redis.del(ROUTING_KEY).catch(() => undefined);
  });

  afterAll(async () => {
    await redis.del(ROUTING_KEY).catch(() => undefined);
    redis.disconnect();
    for (const c of closers) await c().catch(() => undefined);
    await stack.stop();
    await v1Api?.close();
    for (const d of dbs) await d.drop().catch(() => undefined);
    await cluster?.stop();
  });

  test('full cut-over: every session v1 wrote during the run is in v2, as v1 last wrote it; every route of a v1 user goes to v1', async () => {
    const v1 = await v1Db('cut');
    const writer = await V1Writer.connect(v1.url, { mode: 'legacy' });
    closers.push(() => writer.client.end());
    const traffic = new V1Traffic(
      [writer],
      redis,
      v1.sessions.map((s) => ({ id: s.id, user: s.user, template: s.template })),
    );
    traffic.start();
    const runId = await start(options(`coexist-full-${stack.id}`, v1.url));
    await until(runId, 'pilot awaiting approval', (p) => p.awaitingApproval === 'pilot');
    // Bob is still on v1: every route of his goes there, even one v2 does not have; admins stay.
    expect(await route(bob, '/api/v1/sessions')).toMatchObject({ via: 'v1' });
    expect(await route(bob, '/api/v1/templates')).toMatchObject({ via: 'v1' });
    expect(await route(bob, '/api/v1/quotas/me')).toMatchObject({ via: 'v1', status: 200 });
    expect(await route(admin, '/api/v1/templates')).toMatchObject({ via: 'v2' });
    await sleep(1000);
    await stack.call('POST', `/api/v1/migrations/${runId}/approve`, {}, admin);
    await until(runId, 'beta awaiting approval', (p) => p.awaitingApproval === 'beta');
    await sleep(1000);
    await stack.call('POST', `/api/v1/migrations/${runId}/approve`, {}, admin);
    const done = await until(runId, 'waiting to decommission', (p) => p.status === 'waiting-to-decommission');
    await traffic.stop();
    expect(await route(bob, '/api/v1/templates')).toMatchObject({ via: 'v2' });
    expect(done.import.delta!.reimported).toBeGreaterThan(0);

    // Nothing v1 wrote is lost: each session it wrote is in v2, imported by this run, in the state
    // v1 last gave it.
    expect(traffic.last.size).toBeGreaterThan(20);
    const rows = await q(v1.url, `SELECT id, state, platform_metadata FROM sessions WHERE id = ANY($1::text[])`, [[...traffic.last.keys()]]);
    const byId = new Map(rows.map((r) => [r.id, r]));
    const lost = [...traffic.last.entries()].filter(([id, w]) => {
      const r = byId.get(id);
      return !r || r.platform_metadata?.migration_run !== runId || r.state !== (w.state === 'terminated' ? 'terminated' : 'hibernated');
    });
    expect(lost).toEqual([]);
    await stack.call('POST', `/api/v1/migrations/${runId}/cancel-decommission`, {}, admin);
    await until(runId, 'completed', (p) => p.status === 'completed');
    await redis.del(ROUTING_KEY);
  });

  test("rollback after v1 writes keeps them (v1's tables over v1's columns), never scales the worker, replicas from the manifest", async () => {
    const v1 = await v1Db('rb');
    const shadow = await v1Db('shadow');
    const cols = await v1ColumnsOf(v1.url);
    const before = await wholeRowStates(v1.url);
    const replicasBefore = await v1k8s.deploymentReplicas();
    const w1 = await V1Writer.connect(v1.url, { mode: 'legacy' });
    const w2 = await V1Writer.connect(shadow.url, { mode: 'legacy' });
    closers.push(
      () => w1.client.end(),
      () => w2.client.end(),
    );
    const runId = await start(options(`coexist-rb-${stack.id}`, v1.url));
    await until(runId, 'backup done', (p) => p.phases[1].status === 'done');
    const traffic = new V1Traffic(
      [w1, w2],
      redis,
      v1.sessions.map((s) => ({ id: s.id, user: s.user, template: s.template })),
    );
    traffic.start();
    await until(runId, 'pilot awaiting approval', (p) => p.awaitingApproval === 'pilot');
    await sleep(1500);
    await traffic.stop();
    expect(traffic.last.size).toBeGreaterThan(10);
    const r = await stack.call('POST', `/api/v1/migrations/${runId}/rollback`, { reason: 'coexistence' }, admin);
    expect(r.status).toBe(202);
    const done = await until(runId, 'rolled back', (p) => p.status === 'rolled-back');
    expect(done.rollback.filter((s) => s.status === 'failed')).toEqual([]);
    expect(done.rollback.map((s) => s.step)).toEqual([
      'route everyone to v1',
      'scale v2 down',
      'export data created on v2',
      "undo v2's database changes (v1's writes kept)",
    ]);
    // v1's data is exactly v1's: the pre-run rows plus what v1 wrote, nothing of v2.
    expect(await v1TableStates(v1.url, cols)).toEqual(await v1TableStates(shadow.url, cols));
    expect(await v1ColumnsOf(v1.url)).toEqual(cols);
    const tables = (await q(v1.url, `SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1`)).map((x) => x.tablename);
    expect(tables).toEqual(['sessions', 'templates', 'users']);
    // The backup's checksums describe the database as the dump saw it.
    const manifest = JSON.parse(readFileSync(path.join(backupDir, runId, 'manifest.json'), 'utf8'));
    expect({ users: manifest.tables.users, templates: manifest.tables.templates, sessions: manifest.tables.sessions }).toEqual(before);
    // The worker running the rollback kept its replicas; the rest of v2 is down.
    const after = await v1k8s.deploymentReplicas();
    expect(after['streamspace-v2/streamspace-worker']).toBe(replicasBefore['streamspace-v2/streamspace-worker']);
    expect(after['streamspace-v2/streamspace-control-plane']).toBe(0);
    for (const [d, n] of Object.entries(V1_DEPLOYMENTS)) expect(after[d]).toBe(n);
    expect(JSON.parse((await redis.get(ROUTING_KEY))!).mode).toBe('v1');
    // Put v2 back up for the next test.
    await redis.del(ROUTING_KEY);
  });

  test('last resort: restore from the dump into a new database, verified, then swapped; v1 CRDs deleted by decommission come back', async () => {
    const v1 = await v1Db('dump');
    const before = await wholeRowStates(v1.url);
    const crdsBefore = await v1k8s.countCrds();
    const runId = `coexist-dump-${stack.id}`;
    // The archive cannot be written: decommission stops after deleting the CRDs.
    mkdirSync(path.join(backupDir, `streamspace-v1-archive-${runId}.tar.gz`), { recursive: true });
    await start(options(runId, v1.url, { cohorts: [], decommissionAfter: '1s' }));
    const blocked = await until(runId, 'blocked at decommission', (p) => p.status === 'blocked' && p.phase === 'decommission');
    expect(blocked.blockedReason).toMatch(/decommission failed/);
    await expect(v1k8s.countCrds()).rejects.toBeDefined();
    expect((await v1k8s.deploymentReplicas())['streamspace/streamspace-api']).toBe(0);
    const r = await stack.call('POST', `/api/v1/migrations/${runId}/rollback`, { reason: 'dump', database: 'restore' }, admin);
    expect(r.status).toBe(202);
    const done = await until(runId, 'rolled back', (p) => p.status === 'rolled-back');
    expect(done.rollback.filter((s) => s.status === 'failed')).toEqual([]);
    expect(done.rollback.find((s) => s.step.startsWith('restore the database'))?.detail).toMatch(
      /checksums match the backup; the database before the restore is kept as/,
    );
    expect(await wholeRowStates(v1.url)).toEqual(before);
    const kept = (await q(TEST_ENV.pgAdminUrl, `SELECT datname FROM pg_database WHERE datname LIKE $1`, [`${v1.name.slice(0, 40)}_prerb_%`])).map(
      (x) => x.datname,
    );
    expect(kept).toHaveLength(1);
    dbs.push({ drop: async () => void (await q(TEST_ENV.pgAdminUrl, `DROP DATABASE IF EXISTS "${kept[0]}" WITH (FORCE)`)) });
    expect(await v1k8s.countCrds()).toEqual(crdsBefore);
    const after = await v1k8s.deploymentReplicas();
    for (const [d, n] of Object.entries(V1_DEPLOYMENTS)) expect(after[d]).toBe(n);
    expect(existsSync(path.join(backupDir, runId, 'manifest.json'))).toBe(true);
    await redis.del(ROUTING_KEY);
  });
});
