/**
 * The v1 fixture the migration rehearsal runs against: a v1 database on the real PostgreSQL (with
 * `status` or `state`), v1 CRDs/objects on a real kube-apiserver, and the stand-in v1 API.
 */
import { Client } from 'pg';
import { convertSession } from '../activities/migration/convert';
import { TEST_ENV } from './harness/env';
import { KubeCluster, loadKubeClient, startKube } from './harness/kube';
import { createV1Cluster, createV1Database, generateV1Sessions, startFakeV1Api, V1_TEMPLATE_NAMES, V1DbFixture } from './harness/v1-fixture';

jest.setTimeout(120_000);

const k8s = loadKubeClient();
const suffix = `${process.pid}_${Date.now().toString(36)}`;
const NOW = new Date('2025-06-01T12:00:00.000Z');

async function query<T = Record<string, unknown>>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql, params)).rows as T[];
  } finally {
    await c.end();
  }
}

const columnsOf = async (db: V1DbFixture, table: string) =>
  (
    await query<{ column_name: string }>(db.url, `SELECT column_name FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position`, [table])
  ).map((r) => r.column_name);

describe('v1 fixture: database', () => {
  const dbs: V1DbFixture[] = [];
  afterAll(async () => {
    for (const db of dbs) await db.drop();
  });

  test('v1 database with the old `status` column: 220 sessions, users, the template catalog', async () => {
    const db = await createV1Database(TEST_ENV.pgAdminUrl, { name: `v1fix_status_${suffix}`, statusColumn: true, sessions: 220, seed: 7, now: NOW });
    dbs.push(db);
    expect(db.url).toContain(`/v1fix_status_${suffix}`);
    expect(db.counts).toEqual({ users: 6, templates: 4, sessions: 220 });
    expect(db.sessionIds).toHaveLength(220);
    expect(new Set(db.sessionIds).size).toBe(220);
    for (const id of db.sessionIds) expect(id).toMatch(/^ss-[a-z]+-(firefox-browser|chrome-browser|vscode|libreoffice)-\d+$/);

    const cols = await columnsOf(db, 'sessions');
    expect(cols).toContain('status');
    expect(cols).not.toContain('state');
    expect(cols).toEqual(
      expect.arrayContaining([
        'id',
        'user_id',
        'template_name',
        'url',
        'namespace',
        'pod_name',
        'memory',
        'cpu',
        'persistent_home',
        'idle_timeout',
        'max_session_duration',
        'last_activity',
        'created_at',
        'updated_at',
      ]),
    );
    const idType = await query<{ data_type: string }>(
      db.url,
      `SELECT data_type FROM information_schema.columns WHERE table_name = 'sessions' AND column_name = 'id'`,
    );
    expect(idType[0].data_type).toBe('text');
    expect(await query(db.url, `SELECT to_regclass('schema_migrations') AS r`)).toEqual([{ r: null }]);

    const users = await query<{ username: string; role: string; email: string; password_hash: string }>(
      db.url,
      'SELECT username, role, email, password_hash FROM users ORDER BY username',
    );
    expect(users.length).toBeGreaterThanOrEqual(5);
    expect(new Set(users.map((u) => u.role))).toEqual(new Set(['admin', 'user']));
    expect(users.every((u) => u.password_hash === 'v1-hash' && /@/.test(u.email))).toBe(true);
    expect(users.map((u) => u.username)).toEqual(expect.arrayContaining(['alice', 'bob']));

    const tpls = await query<{ name: string; display_name: string; manifest: any }>(db.url, 'SELECT name, display_name, manifest FROM templates ORDER BY name');
    expect(tpls.map((t) => t.name).sort()).toEqual([...V1_TEMPLATE_NAMES].sort());
    const ff = tpls.find((t) => t.name === 'firefox-browser')!;
    expect(ff.manifest).toMatchObject({
      displayName: ff.display_name,
      baseImage: 'lscr.io/linuxserver/firefox:latest',
      defaultResources: { memory: '2Gi', cpu: '1000m' },
      ports: [{ name: 'vnc', containerPort: 3000 }],
      env: [],
      volumeMounts: [{ name: 'user-home', mountPath: '/config' }],
      kasmvnc: { enabled: true, port: 3000 },
    });
    for (const t of tpls)
      expect(t.manifest).toEqual(
        expect.objectContaining({ category: expect.any(String), icon: expect.any(String), capabilities: expect.any(Array), tags: expect.any(Array) }),
      );

    const states = await query<{ status: string; n: number }>(db.url, 'SELECT status, count(*)::int AS n FROM sessions GROUP BY status ORDER BY status');
    expect(states.map((s) => s.status)).toEqual(['hibernated', 'running', 'terminated']);
    for (const s of states) expect(s.n).toBeGreaterThan(20);
    const spread = await query<{ users: number; templates: number; oldest: number; newest: number; bad: number }>(
      db.url,
      `SELECT count(DISTINCT user_id)::int AS users, count(DISTINCT template_name)::int AS templates,
              extract(epoch FROM $1::timestamp - min(created_at))::float / 86400 AS oldest,
              extract(epoch FROM $1::timestamp - max(created_at))::float / 86400 AS newest,
              count(*) FILTER (WHERE namespace <> 'streamspace' OR idle_timeout <> '30m' OR max_session_duration <> '8h'
                               OR memory IS NULL OR cpu IS NULL OR url IS NULL OR last_activity IS NULL
                               OR last_activity < created_at OR last_activity > $1::timestamp
                               OR (status <> 'terminated' AND pod_name IS NULL))::int AS bad
         FROM sessions`,
      ['2025-06-01 12:00:00'],
    );
    expect(spread[0]).toMatchObject({ users: 6, templates: 4, bad: 0 });
    expect(spread[0].oldest).toBeGreaterThan(25);
    expect(spread[0].oldest).toBeLessThanOrEqual(30);
    expect(spread[0].newest).toBeLessThan(2);
    // The rows match what the fixture reports (what createV1Cluster turns into CRs).
    const row = (await query<any>(db.url, 'SELECT * FROM sessions WHERE id = $1', [db.sessions[5].id]))[0];
    expect(row).toMatchObject({
      user_id: db.sessions[5].user,
      template_name: db.sessions[5].template,
      status: db.sessions[5].state,
      memory: db.sessions[5].memory,
      cpu: db.sessions[5].cpu,
    });
  });

  test('v1 database with `state`: same seed and time give the same rows; the generator is deterministic', async () => {
    const db = await createV1Database(TEST_ENV.pgAdminUrl, { name: `v1fix_state_${suffix}`, statusColumn: false, sessions: 220, seed: 7, now: NOW });
    dbs.push(db);
    expect(db.counts).toEqual({ users: 6, templates: 4, sessions: 220 });
    const cols = await columnsOf(db, 'sessions');
    expect(cols).toContain('state');
    expect(cols).not.toContain('status');
    const rowsOf = async (d: V1DbFixture, col: string) =>
      query(
        d.url,
        `SELECT id, user_id, template_name, ${col} AS st, url, pod_name, memory, cpu, persistent_home, last_activity, created_at, updated_at FROM sessions ORDER BY id`,
      );
    const other = dbs[0];
    expect(other?.stateColumn).toBe('status');
    expect(await rowsOf(db, 'state')).toEqual(await rowsOf(other, 'status'));
    const checksum = (d: V1DbFixture, t: string) => query(d.url, `SELECT md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))) AS s FROM ${t} x`);
    for (const t of ['users', 'templates']) expect(await checksum(db, t)).toEqual(await checksum(other, t));
    expect(generateV1Sessions(50, 3, NOW)).toEqual(generateV1Sessions(50, 3, NOW));
    expect(generateV1Sessions(50, 3, NOW)).not.toEqual(generateV1Sessions(50, 4, NOW));

    await db.drop();
    await db.drop(); // idempotent
    expect(await query(TEST_ENV.pgAdminUrl, 'SELECT 1 FROM pg_database WHERE datname = $1', [db.name])).toEqual([]);
  });
});

describe('v1 fixture: Kubernetes objects and the v1 API', () => {
  let cluster: KubeCluster;
  beforeAll(async () => {
    cluster = await startKube();
  });
  afterAll(async () => {
    await cluster?.stop();
  });

  test('CRDs, Session/Template CRs (with bad, unknown-template and duplicate ones) and Deployments', async () => {
    const sessions = generateV1Sessions(220, 7, NOW);
    const t0 = Date.now();
    const fx = await createV1Cluster(cluster.kubeconfig(), { sessions, extraBad: true });
    const elapsed = Date.now() - t0;
    expect(elapsed).toBeLessThan(20_000);

    expect(fx.badIds.map((b) => b.reason)).toEqual(['missing spec.user', 'missing spec.template', 'resources.memory', 'unknown template "no-such-template"']);
    expect(fx.duplicateIds).toEqual([sessions[0].id]);
    expect(fx.expected).toEqual({ sessions: 220 + 4 + 1, templates: 4 });
    expect(await fx.countCrds()).toEqual(fx.expected);

    const kc = new k8s.KubeConfig();
    kc.loadFromString(cluster.kubeconfig());
    const custom = kc.makeApiClient(k8s.CustomObjectsApi);
    const ext = kc.makeApiClient(k8s.ApiextensionsV1Api);
    const list = async (namespace: string, plural = 'sessions') =>
      ((await custom.listNamespacedCustomObject({ group: 'stream.space', version: 'v1alpha1', namespace, plural })) as { items: any[] }).items;

    for (const name of ['sessions.stream.space', 'templates.stream.space']) {
      const crd = await ext.readCustomResourceDefinition({ name });
      expect(crd.spec.scope).toBe('Namespaced');
      expect(crd.spec.versions[0].name).toBe('v1alpha1');
      expect(crd.spec.versions[0].subresources?.status).toBeDefined();
      expect(crd.status?.conditions?.find((c) => c.type === 'Established')?.status).toBe('True');
    }

    const main = await list('streamspace');
    const older = await list('workspaces');
    expect(main).toHaveLength(223);
    expect(older.map((o) => o.metadata.name).sort()).toEqual([sessions[0].id, 'ss-dan-no-such-template-1'].sort());
    const templates = await list('streamspace', 'templates');
    expect(templates.map((t) => t.metadata.name).sort()).toEqual([...V1_TEMPLATE_NAMES].sort());
    expect(templates.find((t) => t.metadata.name === 'firefox-browser').spec).toMatchObject({
      baseImage: 'lscr.io/linuxserver/firefox:latest',
      kasmvnc: { enabled: true, port: 3000 },
    });

    // Specs and statuses (the status went through the /status subresource).
    const byName = new Map(main.map((o) => [o.metadata.name as string, o]));
    for (const s of sessions) {
      const o = byName.get(s.id);
      expect(o).toBeDefined();
      expect(o.spec).toMatchObject({
        user: s.user,
        template: s.template,
        state: s.state,
        resources: { memory: s.memory, cpu: s.cpu },
        persistentHome: s.persistentHome,
        idleTimeout: '30m',
        maxSessionDuration: '8h',
      });
      expect(o.status.phase).toBe({ running: 'Running', hibernated: 'Hibernated', terminated: 'Terminated' }[s.state]);
      expect(o.status.url).toBe(`http://${s.id}.streamspace.svc:3000`);
      expect(o.status.lastActivity).toBe(s.lastActivity);
      if (s.state !== 'terminated') expect(o.status.podName).toBe(s.podName);
    }

    // The bad CRs fail conversion with the reasons the fixture promises; the good ones convert.
    const known = new Set(V1_TEMPLATE_NAMES);
    for (const bad of fx.badIds) {
      const crd = [...main, ...older].find((o) => o.metadata.name === bad.id && o.metadata.namespace === bad.namespace);
      const r = convertSession({ crd }, known);
      expect(r.ok).toBe(false);
      expect(r.ok ? '' : r.reason).toContain(bad.reason);
    }
    for (const s of sessions.slice(0, 30)) expect(convertSession({ crd: byName.get(s.id) }, known).ok).toBe(true);

    expect(await fx.deploymentReplicas()).toEqual({
      'streamspace/streamspace-api': 2,
      'streamspace/streamspace-controller': 1,
      'streamspace/streamspace-k8s-agent': 5,
      'streamspace-v2/streamspace-control-plane': 4,
      'streamspace-v2/streamspace-worker': 2,
    });
    const secret = await kc.makeApiClient(k8s.CoreV1Api).readNamespacedSecret({ name: 'streamspace-secrets', namespace: 'streamspace' });
    expect(Object.keys(secret.data ?? {})).toContain('jwt-secret');

    // Re-applying is harmless; deleting the CRDs makes countCrds reject (as after decommission).
    await createV1Cluster(cluster.kubeconfig(), { sessions: sessions.slice(0, 3) });
    expect(await fx.countCrds()).toEqual(fx.expected);
    await ext.deleteCustomResourceDefinition({ name: 'sessions.stream.space' });
    await ext.deleteCustomResourceDefinition({ name: 'templates.stream.space' });
    let gone = false;
    for (let i = 0; i < 200 && !gone; i++) {
      gone = await fx.countCrds().then(
        () => false,
        (e: { code?: number }) => e.code === 404,
      );
      if (!gone) await new Promise((r) => setTimeout(r, 100));
    }
    expect(gone).toBe(true);
  });

  test('the stand-in v1 API answers, records requests, and can be taken down and back', async () => {
    const api = await startFakeV1Api();
    try {
      expect(api.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const health = await fetch(`${api.url}/health`);
      expect(health.status).toBe(200);
      expect(await health.json()).toEqual({ status: 'ok', version: 'v1' });
      const list = await fetch(`${api.url}/api/v1/sessions?user=alice`, { headers: { authorization: 'Bearer v1-token' } });
      expect(await list.json()).toEqual([{ served_by: 'v1' }]);
      const other = await fetch(`${api.url}/api/v1/templates/firefox-browser`, { method: 'POST', body: '{"x":1}' });
      expect(other.status).toBe(200);
      expect(await other.json()).toEqual({ served_by: 'v1' });
      expect(api.requests).toEqual([
        { method: 'GET', path: '/health', url: '/health' },
        { method: 'GET', path: '/api/v1/sessions', url: '/api/v1/sessions?user=alice', auth: 'Bearer v1-token' },
        { method: 'POST', path: '/api/v1/templates/firefox-browser', url: '/api/v1/templates/firefox-browser' },
      ]);

      api.pause();
      expect(api.paused).toBe(true);
      await expect(fetch(`${api.url}/health`)).rejects.toThrow();
      api.resume();
      expect((await fetch(`${api.url}/health`)).status).toBe(200);
      expect(api.requests).toHaveLength(4);
    } finally {
      await api.close();
      await api.close();
    }
    await expect(fetch(`${api.url}/health`)).rejects.toThrow();
  });
});
