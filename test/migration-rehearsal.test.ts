/**
 * Issue 5: a rehearsal of the blue-green migration on real PostgreSQL, a real kube-apiserver and
 * real Temporal, against a v1 fixture (220+ sessions in varied states and templates, several
 * users, v1 CRDs in two namespaces with malformed, unknown-template and duplicate entries, v1
 * Deployments, a v1 database with the old `status` column) and a stand-in v1 API.
 *
 * Databases: the v1 data lives in its own database (v1_<stack>); the v2 control plane under test
 * (its users, agents, bulk import) runs on the stack's database, given to the run as
 * `v2.databaseUrlRef: env:DATABASE_URL`. So agents are awaited, and health gates read, where
 * the v2 agents really register, while the import, the backup and the rollback work on v1's
 * database. In production v2 runs on v1's database (v2.database defaults to v1's); the session
 * workflows of imported sessions (adoption) read the worker's own database, so that path is
 * exercised on a shared database (the stack started on a v1.0.0 install) by
 * test/v1-users-sessions.test.ts; here adoption finds no v1 rows in the v2 stack's database. Run ids carry the stack id: workflow ids
 * are namespace-wide and the Temporal server outlives a test run.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import Redis from 'ioredis';
import { Client } from 'pg';
import { ROUTING_KEY } from '../api/routing/state';
import { migrationWorkflowId, MigrationProgress } from '../workflows/migration-api';
import { TEST_ENV } from './harness/env';
import { KubeCluster, loadKubeClient, startKube } from './harness/kube';
import { Proc, ROOT, Stack, waitFor } from './harness/stack';
import { createV1Cluster, createV1Database, startFakeV1Api } from './harness/v1-fixture';

/** The database URL without its password: the worker reads the password from its own environment (V1_DATABASE_PASSWORD). */
const noPassword = (url: string): string => {
  const u = new URL(url);
  u.password = '';
  return u.toString();
};
const DB_SECRET_ENV = { V1_DATABASE_PASSWORD: decodeURIComponent(new URL(TEST_ENV.pgAdminUrl).password) };

jest.setTimeout(900_000);

const k8s = loadKubeClient();
const SA_USER = 'system:serviceaccount:streamspace:streamspace-agent';
const V1_DEPLOYMENTS = { 'streamspace/streamspace-api': 2, 'streamspace/streamspace-controller': 1 };
const run = promisify(execFile);

async function tableStates(url: string) {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    const out: Record<string, { count: number; checksum: string }> = {};
    for (const t of ['users', 'templates', 'sessions']) {
      const r = await c.query(`SELECT count(*)::int AS n, COALESCE(md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))), '') AS sum FROM "${t}" x`);
      out[t] = { count: r.rows[0].n, checksum: r.rows[0].sum };
    }
    return out;
  } finally {
    await c.end();
  }
}

describe('v1 → v2 blue-green migration rehearsal', () => {
  const stack = new Stack('migration', { REDIS_URL: TEST_ENV.redisUrl, ...DB_SECRET_ENV });
  let cluster: KubeCluster;
  let v1: Awaited<ReturnType<typeof createV1Database>>;
  let v1k8s: Awaited<ReturnType<typeof createV1Cluster>>;
  let v1Api: Awaited<ReturnType<typeof startFakeV1Api>>;
  let admin: string;
  let alice: string;
  let bob: string;
  let agent: Proc;
  const redis = new Redis(TEST_ENV.redisUrl);
  const backupDir = path.join(ROOT, 'test-artifacts', 'migration-backups', stack.id);
  let kubeconfig: string;

  const options = (runId: string, extra: Record<string, unknown> = {}) => ({
    runId,
    strategy: 'blue-green',
    v1: {
      apiUrl: v1Api.url,
      databaseUrl: noPassword(v1.url),
      databasePasswordRef: 'env:V1_DATABASE_PASSWORD',
      kubeconfig,
      namespaces: ['streamspace', 'workspaces'],
      deployments: Object.keys(V1_DEPLOYMENTS),
    },
    v2: {
      readyUrl: `${stack.url}/ready`,
      databaseUrlRef: 'env:DATABASE_URL',
      deployments: ['streamspace-v2/streamspace-control-plane', 'streamspace-v2/streamspace-worker'],
      platforms: ['kubernetes'],
    },
    backupDir,
    cohorts: [
      { name: 'pilot', users: ['alice'] },
      { name: 'beta', percent: 50 },
    ],
    approval: { mode: 'manual' },
    importBatchSize: 10,
    importPaceMs: 0,
    decommissionAfter: '2s',
    agentWaitTimeout: '10m',
    ...extra,
  });

  const start = async (opts: Record<string, unknown>) => {
    const r = await stack.call('POST', '/api/v1/migrations', opts, admin);
    expect(r.status).toBe(201);
    return r.body.runId as string;
  };
  const progress = async (runId: string): Promise<MigrationProgress> => (await stack.call('GET', `/api/v1/migrations/${runId}`, undefined, admin)).body;
  const until = (runId: string, what: string, pred: (p: MigrationProgress) => boolean, timeoutMs = 120_000) =>
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
  const routedTo = async (token: string) => {
    const r = await fetch(`${stack.url}/api/v1/sessions`, { headers: { authorization: `Bearer ${token}` } });
    if (r.headers.get('x-streamspace-route') === 'v1') return 'v1';
    // Served by v2: say how, so a failure shows whether the proxy failed or the routing was not applied.
    return r.status === 200 ? 'v2' : `v2 (${r.status}: ${await r.text()})`;
  };
  const replicas = () => v1k8s.deploymentReplicas();
  const startAgent = async () => {
    agent = stack.startAgentProcess('k8s-agent', 'agents/kubernetes/main.js', {
      AGENT_ID: 'k8s-migration',
      AGENT_TOKEN: stack.agentToken('k8s-migration'),
      CONTROL_PLANE_URL: `ws://127.0.0.1:${stack.agentPort}`,
      PLATFORM: 'kubernetes',
      NAMESPACE: 'streamspace',
      KUBECONFIG: path.join(stack.logDir, 'agent-kubeconfig.yaml'),
    });
    await agent.waitForLog(/registered successfully/, 30_000);
  };

  beforeAll(async () => {
    mkdirSync(backupDir, { recursive: true });
    cluster = await startKube({ tokens: [{ user: SA_USER, groups: ['system:serviceaccounts', 'system:serviceaccounts:streamspace'] }] });
    kubeconfig = path.join(stack.logDir, 'admin-kubeconfig.yaml');
    v1 = await createV1Database(TEST_ENV.pgAdminUrl, { name: `v1_${stack.id}`, statusColumn: true, sessions: 220 });
    v1k8s = await createV1Cluster(cluster.kubeconfig(), {
      sessions: v1.sessions,
      extraBad: true,
    });
    writeFileSync(kubeconfig, cluster.kubeconfig());
    const adminKc = new k8s.KubeConfig();
    adminKc.loadFromString(cluster.kubeconfig());
    const objectsApi = k8s.KubernetesObjectApi.makeApiClient(adminKc);
    for (const m of (k8s.loadAllYaml(readFileSync(path.join(ROOT, 'deploy/kubernetes/k8s-agent.yaml'), 'utf8')) as any[]).filter(
      (x) => x.kind !== 'Deployment',
    )) {
      await objectsApi.create(m).catch((e: { code?: number }) => {
        if (e.code !== 409) throw e;
      });
    }
    v1Api = await startFakeV1Api();
    await stack.start();
    writeFileSync(path.join(stack.logDir, 'agent-kubeconfig.yaml'), cluster.kubeconfig(cluster.tokens[SA_USER]));
    admin = await stack.login();
    for (const u of ['alice', 'bob']) await stack.call('POST', '/api/v1/users', { username: u, password: `${u}-password` }, admin);
    alice = await stack.login('alice', 'alice-password');
    bob = await stack.login('bob', 'bob-password');
    await redis.del(ROUTING_KEY);
  });

  // A failed case must not leave its routing behind (a later case's user would be proxied to v1).
  afterEach(async () => {
    await redis.del(ROUTING_KEY).catch(() => undefined);
  });

  afterAll(async () => {
    await redis.del(ROUTING_KEY).catch(() => undefined);
    redis.disconnect();
    await stack.stop();
    await v1Api?.close();
    await v1?.drop();
    await cluster?.stop();
  });

  test('dry run: preflight and the plan, nothing changed', async () => {
    const before = await tableStates(v1.url);
    const runId = await start(options(`plan-${stack.id}`, { dryRun: true }));
    const p = await waitFor('plan', async () => {
      const x = await progress(runId);
      return x.status === 'planned' ? x : undefined;
    });
    expect(p.plan.join('\n')).toMatch(/import: \d+ template CRDs; \d+ Session CRDs and 220 database rows/);
    expect(p.phases.map((x) => x.status)).toEqual(['done', 'skipped', 'skipped', 'skipped', 'skipped', 'skipped', 'skipped']);
    expect(await tableStates(v1.url)).toEqual(before);
    // A plan writes nothing anywhere: no backup folder, no table, no Redis key.
    expect(existsSync(path.join(backupDir, runId))).toBe(false);
    const c = new Client({ connectionString: v1.url });
    await c.connect();
    const tables = (await c.query(`SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1`)).rows.map((r) => r.tablename);
    await c.end();
    expect(tables).toEqual(['sessions', 'templates', 'users']);
    expect(await redis.keys('streamspace:migration*')).toEqual([]);
  });

  // Rollback from a run stopped at each kind of point; every time v1 must be back exactly as it was.
  const rollbackCases: Array<[string, () => Promise<void>, (runId: string) => Promise<unknown>]> = [
    [
      'preflight (blocked: v1 API down)',
      async () => v1Api.pause(),
      (id) => until(id, 'blocked at preflight', (p) => p.status === 'blocked' && p.phase === 'preflight'),
    ],
    [
      'agents (schema applied, no agent online yet)',
      async () => undefined,
      (id) => until(id, 'waiting for agents', (p) => p.phase === 'agents' && p.phases[2].status === 'done'),
    ],
    ['import (half way)', startAgent, (id) => until(id, 'import half way', (p) => p.phase === 'import' && p.import.processed >= 100)],
    ['cutover (pilot awaiting approval)', async () => undefined, (id) => until(id, 'pilot awaiting approval', (p) => p.awaitingApproval === 'pilot')],
    [
      'decommission (waiting on its timer)',
      async () => undefined,
      async (id) => {
        await until(id, 'pilot awaiting approval', (p) => p.awaitingApproval === 'pilot');
        await stack.call('POST', `/api/v1/migrations/${id}/approve`, {}, admin);
        await until(id, 'beta awaiting approval', (p) => p.awaitingApproval === 'beta');
        await stack.call('POST', `/api/v1/migrations/${id}/approve`, {}, admin);
        return until(id, 'waiting to decommission', (p) => p.status === 'waiting-to-decommission');
      },
    ],
  ];
  test.each(rollbackCases)('rollback from %s brings v1 back as it was', async (_name, setup, reach) => {
    const before = await tableStates(v1.url);
    const replicasBefore = await replicas();
    await setup();
    const runId = await start(options(`rb-${Math.random().toString(36).slice(2, 8)}`, { importPaceMs: 100, decommissionAfter: '1h' }));
    await reach(runId);
    v1Api.resume();
    const r = await stack.call('POST', `/api/v1/migrations/${runId}/rollback`, { reason: 'rehearsal' }, admin);
    expect(r.status).toBe(202);
    const done = await until(runId, 'rolled back', (p) => p.status === 'rolled-back', 180_000);
    expect(done.rollback.filter((s) => s.status === 'failed')).toEqual([]);
    expect(await tableStates(v1.url)).toEqual(before);
    const manifestPath = path.join(backupDir, runId, 'manifest.json');
    if (existsSync(manifestPath)) expect(JSON.parse(readFileSync(manifestPath, 'utf8')).tables).toEqual(before);
    const after = await replicas();
    for (const [d, n] of Object.entries(V1_DEPLOYMENTS)) expect(after[d]).toBe(n);
    // v2 down, except the worker running the rollback (never scaled).
    expect(after).toMatchObject({ ...replicasBefore, 'streamspace-v2/streamspace-control-plane': 0 });
    expect(after['streamspace-v2/streamspace-worker']).toBe(replicasBefore['streamspace-v2/streamspace-worker']);
    expect(JSON.parse((await redis.get(ROUTING_KEY))!).mode).toBe('v1');
    expect(await routedTo(alice)).toBe('v1');
    await redis.del(ROUTING_KEY);
  });

  test('full run to decommission, resuming after worker kills during import and cut-over', async () => {
    if (!agent) await startAgent();
    const runId = await start(options(`full-${stack.id}`, { importPaceMs: 150 }));
    // Kill the worker in the middle of the import; a new worker resumes at the next batch.
    await until(runId, 'import under way', (p) => p.phase === 'import' && p.import.processed >= 30);
    await stack.worker.kill('SIGKILL');
    await stack.startWorker();
    const atPilot = await until(runId, 'pilot awaiting approval', (p) => p.awaitingApproval === 'pilot', 180_000);
    expect(atPilot.import.total).toBeGreaterThanOrEqual(220);
    // Cohort routing: alice is in the pilot, bob is not (he is proxied to v1).
    expect(await routedTo(alice)).toBe('v2');
    expect(await routedTo(bob)).toBe('v1');
    expect(v1Api.requests.some((q) => q.path === '/api/v1/sessions')).toBe(true);
    // Progress is visible from the CLI, the query and the Temporal UI's search attribute.
    const cli = await run(process.execPath, [path.join(ROOT, 'dist/db/migration-main.js'), 'status', runId], { env: { ...process.env, ...stack.commonEnv } });
    expect(cli.stdout).toMatch(/import\s+\[#{24}\] 100%/);
    expect(cli.stdout).toMatch(/waiting for approval of cohort "pilot"/);
    const desc = await stack.temporal.workflow.getHandle(migrationWorkflowId(runId)).describe();
    expect(desc.searchAttributes.StreamSpaceMigrationPhase).toEqual(['cutover:awaiting-approval']);
    // Kill the worker while the cut-over waits; approvals still land and the run continues.
    await stack.worker.kill('SIGKILL');
    await stack.startWorker();
    expect((await stack.call('POST', `/api/v1/migrations/${runId}/approve`, { cohort: 'pilot' }, admin)).status).toBe(202);
    await until(runId, 'beta awaiting approval', (p) => p.awaitingApproval === 'beta');
    await run(process.execPath, [path.join(ROOT, 'dist/db/migration-main.js'), 'approve', runId], { env: { ...process.env, ...stack.commonEnv } });
    const final = await until(runId, 'completed', (p) => p.status === 'completed', 180_000);
    expect(await routedTo(bob)).toBe('v2');

    // Every v1 session is accounted for: imported, or reported with a reason.
    const c = new Client({ connectionString: v1.url });
    await c.connect();
    const results = (await c.query(`SELECT kind, source_id, namespace, status, reason FROM migration_import_results WHERE run_id = $1`, [runId])).rows;
    const sessionsTable = (await c.query(`SELECT id, state, platform, platform_metadata FROM sessions`)).rows;
    await c.end();
    const sessionResults = results.filter((r) => r.kind === 'session');
    for (const id of v1.sessionIds) expect(sessionResults.some((r) => r.source_id === id)).toBe(true);
    for (const bad of v1k8s.badIds) {
      const row = sessionResults.find((r) => r.source_id === bad.id && r.namespace === bad.namespace);
      if (!row || !row.reason.includes(bad.reason))
        console.log(
          'import results for',
          bad,
          sessionResults.filter((r) => r.source_id === bad.id),
        );
      expect(row).toMatchObject({ status: 'failed' });
      expect(row!.reason).toMatch(bad.reason);
    }
    for (const dup of v1k8s.duplicateIds)
      expect(sessionResults.filter((r) => r.source_id === dup && r.status === 'failed' && /duplicate id/.test(r.reason))).toHaveLength(1);
    const imported = sessionResults.filter((r) => r.status === 'imported').length;
    expect(imported).toBe(final.import.imported);
    expect(imported + final.import.failed - final.import.failures.filter((f) => f.kind === 'template').length).toBe(sessionResults.length);
    // No duplicate rows, and the old `status` values became `state`.
    expect(new Set(sessionsTable.map((s) => s.id)).size).toBe(sessionsTable.length);
    expect(sessionsTable.filter((s) => s.platform_metadata?.migration_run === runId)).toHaveLength(imported);
    expect(sessionsTable.every((s) => ['hibernated', 'terminated', 'running', 'pending'].includes(s.state))).toBe(true);
    // Templates imported.
    expect(results.filter((r) => r.kind === 'template' && r.status === 'imported').length).toBeGreaterThanOrEqual(4);

    // No phase ran twice, although the worker died twice.
    const history = await stack.temporal.workflow.getHandle(migrationWorkflowId(runId)).fetchHistory();
    const scheduled = (history.events ?? []).map((e) => e.activityTaskScheduledEventAttributes?.activityType?.name).filter(Boolean) as string[];
    const count = (n: string) => scheduled.filter((x) => x === n).length;
    expect([count('preflight'), count('backup'), count('migrateSchema'), count('waitForAgents'), count('prepareImport')]).toEqual([1, 1, 1, 1, 1]);
    expect(count('setRouting')).toBe(3);
    // The pages run in child workflows (a cursor each, never the list of ids); no page ran twice.
    const child = await stack.temporal.workflow.getHandle(`${migrationWorkflowId(runId)}/import`).fetchHistory();
    const pages = (child.events ?? []).filter((e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'importPage').length;
    expect(pages).toBeGreaterThanOrEqual(Math.ceil(final.import.total / 10));
    expect(pages).toBeLessThanOrEqual(Math.ceil(final.import.total / 10) + 6);
    expect(scheduled).not.toContain('importPage');

    // Decommissioned: v1 scaled to 0, CRDs gone, archive written.
    const after = await replicas();
    for (const d of Object.keys(V1_DEPLOYMENTS)) expect(after[d]).toBe(0);
    await expect(v1k8s.countCrds()).rejects.toBeDefined();
    expect(existsSync(path.join(backupDir, `streamspace-v1-archive-${runId}.tar.gz`))).toBe(true);
    expect(final.phases.map((p) => p.status)).toEqual(['done', 'done', 'done', 'done', 'done', 'done', 'done']);
  });

  test("bulk import (the spec's Option B): per-row results, idempotent, nothing silently dropped", async () => {
    const items = [
      {
        apiVersion: 'stream.space/v1alpha1',
        kind: 'Session',
        metadata: { name: 'bulk-1', namespace: 'streamspace' },
        spec: { user: 'carol', template: 'terminal', state: 'running' },
      },
      {
        apiVersion: 'stream.space/v1alpha1',
        kind: 'Session',
        metadata: { name: 'bulk-2', namespace: 'streamspace' },
        spec: { user: 'carol', template: 'no-such-template' },
      },
      { apiVersion: 'stream.space/v1alpha1', kind: 'Session', metadata: { name: 'bulk-3', namespace: 'streamspace' }, spec: { template: 'terminal' } },
      { id: 'bulk-4', user: 'dan', template: 'firefox-browser', state: 'hibernated' },
      { id: 'bulk-4', user: 'dan', template: 'firefox-browser' },
    ];
    // Imports never create users: the owners exist (carol, dan); an unknown owner is a failure.
    for (const username of ['carol', 'dan'])
      expect((await stack.call('POST', '/api/v1/users', { username, password: `${username}-password` }, admin)).status).toBe(201);
    items.push({ id: 'bulk-5', user: 'nobody-here', template: 'terminal' });
    const first = await stack.call('POST', '/api/v1/sessions/bulk-import', { items }, admin);
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ total: 6, imported: 2, failed: 4 });
    expect(first.body.results.map((r: { status: string; reason?: string }) => r.reason ?? r.status)).toEqual([
      'imported',
      'unknown template "no-such-template"',
      'missing spec.user',
      'imported',
      'duplicate id in this request',
      'owner "nobody-here" is not a user (create the user first, then import again)',
    ]);
    const again = await stack.call('POST', '/api/v1/sessions/bulk-import', { items }, admin);
    expect(again.body).toMatchObject({ imported: 0, unchanged: 2, failed: 4 });
    // Each imported session is a managed v2 session (its workflow runs, hibernated).
    expect((await stack.call('GET', '/api/v1/sessions/bulk-1', undefined, admin)).body).toMatchObject({ state: 'hibernated', user: 'carol' });
    expect((await stack.temporal.workflow.getHandle('session/bulk-1').describe()).status.name).toBe('RUNNING');
    expect((await stack.call('POST', '/api/v1/sessions/bulk-import', { nope: 1 }, admin)).status).toBe(400);
    expect((await stack.call('POST', '/api/v1/sessions/bulk-import', { items }, alice)).status).toBe(403);
  });
});
