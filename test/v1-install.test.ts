/**
 * The v1.0.0 install fixture checked against facts about v1.0.0's database (database.go's
 * Migrate() at c5b7378, users.go, sessions.go, the catalog sync), on the real PostgreSQL.
 */
import bcrypt from 'bcryptjs';
import { Client } from 'pg';
import { TEST_ENV } from './harness/env';
import { createV1_0_0Database, V1_0_0_CATALOG, V1_SESSION_STATES, V1InstallFixture, v1TableStates } from './harness/v1-install';
import { V1_0_0_TABLES } from './harness/v1-schema-1.0.0';

jest.setTimeout(120_000);

const suffix = `${process.pid}_${Date.now().toString(36)}`;
const NOW = new Date('2025-06-01T12:00:00.000Z');
/** `CREATE TABLE` statements in v1.0.0's Migrate(). */
const V1_TABLE_COUNT = 88;

async function query<T = any>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql, params)).rows as T[];
  } finally {
    await c.end();
  }
}

describe('StreamSpace v1.0.0 install fixture', () => {
  const fixtures: V1InstallFixture[] = [];
  let fx: V1InstallFixture;
  beforeAll(async () => {
    fx = await createV1_0_0Database(TEST_ENV.pgAdminUrl, { name: `v1inst_state_${suffix}`, seed: 7, now: NOW });
    fixtures.push(fx);
  });
  afterAll(async () => {
    for (const f of fixtures) await f.drop();
  });

  test("schema: v1's 88 tables, varchar user ids, sessions.user_id → users(id), v1's platform_controllers", async () => {
    expect(V1_0_0_TABLES).toHaveLength(V1_TABLE_COUNT);
    expect(fx.v1Tables).toEqual([...V1_0_0_TABLES]);
    const tables = await query(fx.url, `SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'`);
    expect(tables[0].n).toBe(V1_TABLE_COUNT);

    const idType = await query(
      fx.url,
      `SELECT data_type, character_maximum_length AS len FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'id'`,
    );
    expect(idType).toEqual([{ data_type: 'character varying', len: 255 }]);

    const fk = await query(
      fx.url,
      `SELECT a.attname AS col, c.confrelid::regclass::text AS ref, ra.attname AS ref_col, c.confdeltype AS on_delete
         FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
         JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = ANY (c.confkey)
        WHERE c.conrelid = 'sessions'::regclass AND c.contype = 'f' ORDER BY 1`,
    );
    expect(fk).toEqual([
      { col: 'team_id', ref: 'groups', ref_col: 'id', on_delete: 'n' },
      { col: 'user_id', ref: 'users', ref_col: 'id', on_delete: 'c' },
    ]);

    expect(fx.v1Columns.sessions).toEqual([
      'id',
      'user_id',
      'team_id',
      'template_name',
      'state',
      'app_type',
      'active_connections',
      'url',
      'namespace',
      'created_at',
      'last_connection',
      'last_disconnect',
      'updated_at',
      'snapshot_config',
      'platform',
      'controller_id',
      'pod_name',
      'memory',
      'cpu',
      'persistent_home',
      'idle_timeout',
      'max_session_duration',
      'last_activity',
    ]);
    expect(fx.v1Columns.platform_controllers).toEqual([
      'id',
      'controller_id',
      'platform',
      'display_name',
      'status',
      'version',
      'capabilities',
      'cluster_info',
      'last_heartbeat',
      'created_at',
      'updated_at',
    ]);
    expect(fx.v1Columns.platform_controllers).not.toContain('controller_type');
    expect(await query(fx.url, `SELECT to_regclass('schema_migrations') AS r, to_regclass('templates') AS t`)).toEqual([{ r: null, t: null }]);
  });

  test('rows: bcrypt $2a$10$ hashes that verify, the license, seeds, catalog manifests and sessions in every v1 state', async () => {
    const users = await query(fx.url, 'SELECT id, username, email, role, provider, active, password_hash FROM users ORDER BY created_at, username');
    expect(users.map((u) => u.username)).toEqual(fx.users.map((u) => u.username));
    for (const u of fx.users) {
      const row = users.find((r) => r.id === u.id);
      expect(row).toMatchObject({ username: u.username, email: u.email, role: u.role, provider: 'local', active: u.active });
      expect(row.password_hash).toMatch(/^\$2a\$10\$[./A-Za-z0-9]{53}$/);
      expect(bcrypt.compareSync(u.password, row.password_hash)).toBe(true);
      expect(bcrypt.compareSync(`${u.password}x`, row.password_hash)).toBe(false);
    }
    expect(fx.users[0].id).toBe('admin');
    for (const u of fx.users.slice(1)) expect(u.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(fx.users.filter((u) => !u.active)).toHaveLength(1);
    expect(new Set(fx.users.map((u) => u.role))).toEqual(new Set(['admin', 'user']));

    const licenses = await query(
      fx.url,
      `SELECT license_key, tier, status, max_users, features->>'basic_auth' AS basic, expires_at - issued_at AS span FROM licenses`,
    );
    expect(licenses).toEqual([
      { license_key: 'COMMUNITY-DEFAULT', tier: 'community', status: 'active', max_users: 10, basic: 'true', span: expect.anything() },
    ]);
    const seeds = await query(
      fx.url,
      `SELECT (SELECT count(*)::int FROM team_role_permissions) AS perms, (SELECT count(*)::int FROM configuration) AS config,
              (SELECT string_agg(name || ':' || status, ',' ORDER BY id) FROM repositories) AS repos,
              (SELECT count(*)::int FROM group_memberships WHERE group_id = 'all-users') AS members,
              (SELECT count(*)::int FROM user_quotas) AS quotas`,
    );
    expect(seeds).toEqual([
      { perms: 22, config: 10, repos: 'Official Plugins:pending,Official Templates:synced', members: fx.users.length, quotas: fx.users.length },
    ]);

    const catalog = await query(
      fx.url,
      `SELECT ct.name, ct.app_type, ct.manifest, r.name AS repo FROM catalog_templates ct JOIN repositories r ON r.id = ct.repository_id`,
    );
    expect(catalog.map((t) => t.name).sort()).toEqual([...fx.templates].sort());
    expect(fx.templates).toEqual(expect.arrayContaining(['firefox-browser']));
    expect(fx.templates.length).toBeGreaterThanOrEqual(4);
    for (const t of catalog) {
      expect(t.repo).toBe('Official Templates');
      expect(t.manifest).toMatchObject({
        Kind: 'Template',
        Metadata: { Name: t.name },
        Spec: {
          BaseImage: V1_0_0_CATALOG[t.name].baseImage,
          DefaultResources: { memory: V1_0_0_CATALOG[t.name].memory, cpu: V1_0_0_CATALOG[t.name].cpu },
          Ports: [expect.objectContaining({ ContainerPort: V1_0_0_CATALOG[t.name].port })],
          DisplayName: expect.any(String),
          Description: expect.any(String),
          Category: expect.any(String),
          Icon: expect.stringMatching(/^https:/),
        },
      });
      expect(t.manifest.Spec).toHaveProperty('VNC');
    }

    const sessions = await query(fx.url, 'SELECT s.*, u.username FROM sessions s JOIN users u ON u.id = s.user_id ORDER BY s.id');
    expect(sessions).toHaveLength(fx.sessions.length);
    expect(new Set(sessions.map((s) => s.state))).toEqual(new Set(V1_SESSION_STATES));
    for (const s of fx.sessions) {
      const row = sessions.find((r) => r.id === s.id);
      expect(row).toMatchObject({
        user_id: s.userId,
        username: s.username,
        template_name: s.template,
        state: s.state,
        namespace: 'streamspace',
        platform: 'kubernetes',
      });
      expect(s.id).toMatch(new RegExp(`^${s.username}-${s.template}-[0-9a-f]{8}$`));
      expect(row.memory).toMatch(/^\d+Gi$/);
      if (s.state === 'pending') expect(row).toMatchObject({ url: '', pod_name: '', last_activity: null });
      else expect(row.pod_name).toBe(`ss-${s.username}-${s.template}`);
    }
    const audit = await query(
      fx.url,
      `SELECT user_id, action, resource_type, resource_id, changes FROM audit_log WHERE action = 'POST' AND resource_type = '/api/v1/sessions' LIMIT 1`,
    );
    expect(audit[0]).toMatchObject({
      action: 'POST',
      resource_id: '',
      changes: { method: 'POST', path: '/api/v1/sessions', status_code: 202, request_body: null },
    });
  });

  test('deterministic for a seed; the status variant differs only in sessions.state → status', async () => {
    const status = await createV1_0_0Database(TEST_ENV.pgAdminUrl, { name: `v1inst_status_${suffix}`, seed: 7, now: NOW, statusColumn: true });
    fixtures.push(status);
    expect(status.stateColumn).toBe('status');
    expect(status.v1Columns.sessions).toContain('status');
    expect(status.v1Columns.sessions).not.toContain('state');
    expect(status.users).toEqual(fx.users);
    expect(status.sessions).toEqual(fx.sessions);
    const a = await v1TableStates(fx.url, fx.v1Columns);
    const b = await v1TableStates(status.url, status.v1Columns);
    expect(Object.keys(b)).toHaveLength(V1_TABLE_COUNT);
    expect(b.sessions).toEqual(a.sessions); // same values, the column only renamed
    expect(b).toEqual(a);
    expect(a.users.count).toBe(fx.users.length);
    expect(a.audit_log.count).toBeGreaterThan(fx.sessions.length);
  });
});
