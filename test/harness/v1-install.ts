/**
 * A StreamSpace v1.0.0 install to migrate from: its database created by v1.0.0's own statement
 * list (./v1-schema-1.0.0.ts), then filled with rows shaped the way v1's code writes them:
 *
 *   - users: CreateUser (api/internal/db/users.go): id = uuid.New().String(), provider 'local',
 *     active true, password_hash = bcrypt `$2a$10$…` (golang.org/x/crypto/bcrypt, DefaultCost),
 *     full_name '' when not given; then a default user_quotas row and an all_users membership with
 *     a uuid id. Logins set last_login = updated_at. One user is deactivated (active false).
 *   - the admin (id 'admin') gets its hash from ADMIN_PASSWORD at startup (ensureAdminPassword).
 *   - catalog_templates: the repository sync (api/internal/sync) of 'Official Templates': one row per
 *     Template YAML, manifest = encoding/json of v1's TemplateManifest struct. That struct has only
 *     yaml tags, so the JSON keys are the Go field names: {"APIVersion","Kind","Metadata":{"Name",…},
 *     "Spec":{"DisplayName","BaseImage","DefaultResources","Ports":[{"Name","ContainerPort",
 *     "Protocol"}],"VNC",…}}; a YAML `kasmvnc:` block has no field there and is dropped (VNC null).
 *     The repository row then reads status 'synced', error_message '', last_sync, template_count.
 *   - sessions: the API's CreateSession + SessionDB.CreateSession (state 'pending', app_type '' —
 *     the handler never sets it, so the column default 'desktop' does not apply —, platform
 *     'kubernetes', namespace 'streamspace', url '' and pod_name ''), later status events set
 *     state/url/pod_name (url https://<id>.<ingress.domain>, pod_name = the Deployment
 *     ss-<user>-<template>), the activity tracker sets last_activity; DeleteSession soft-deletes
 *     (state 'deleted'). Some rows come from cacheSessionInDB instead (app_type 'desktop').
 *     Ids are `<user>-<template>-<first 8 hex of a uuid>`.
 *   - audit_log: the audit middleware: action = HTTP method, resource_type = URL path, resource_id
 *     '' (never set), user_id = the JWT's user id ('' before login), changes = {method, path,
 *     status_code, duration_ms, request_body: null, response_body: null, error: '', metadata: null}.
 *   - platform_controllers: one controller registered through RegisterController (id ctrl_<unix ns>).
 *   - licenses: the seeded COMMUNITY-DEFAULT row; optionally a 'pro' row activated the way
 *     ActivateLicense does it (every active license → inactive, then the key → active).
 *
 * Everything is deterministic for a seed and `now`: uuids, salts, choices and timestamps come from a
 * seeded PRNG; the rows v1's schema seeds at install time get the install time (now − 120 days)
 * instead of the wall clock.
 *
 * V1Writer writes sessions the way v1.0.0's SessionDB does, against `state` or (older installs)
 * `status`, so tests can show v1 keeps working on a database our migrations have run on.
 */
import { Client } from 'pg';
import { applyV1_0_0Schema, V1_0_0_TABLES, V1_ADMIN, V1_ALL_USERS_GROUP, V1_TEMPLATES_REPOSITORY, v1BcryptHash } from './v1-schema-1.0.0';

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/** Every value v1.0.0 writes to sessions.state: the controller phases lowercased, and soft-delete. */
export const V1_SESSION_STATES = ['pending', 'running', 'hibernated', 'terminated', 'failed', 'deleted'] as const;
export type V1SessionState = (typeof V1_SESSION_STATES)[number];

export interface V1InstallOptions {
  /** Database name (dropped first if it exists). */
  name: string;
  /** Users created through v1's CreateUser, besides the seeded admin (default 6; the last is inactive). */
  users?: number;
  /** Sessions per user, the admin included (default 3). */
  sessionsPerUser?: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /** "Now" for every timestamp (default: the current time). */
  now?: Date;
  /** true: rename sessions.state to status after v1's schema (installs that had `status`). */
  statusColumn?: boolean;
  /** v1's ADMIN_PASSWORD (default 'v1-admin-password'). */
  adminPassword?: string;
  /** Also a 'pro' license, activated (the community row becomes inactive). Default false. */
  proLicense?: boolean;
}

export interface V1InstallUser {
  id: string;
  username: string;
  email: string;
  fullName: string;
  role: 'admin' | 'user';
  active: boolean;
  /** The clear-text password whose bcrypt hash is stored. */
  password: string;
}

export interface V1InstallSession {
  id: string;
  /** users.id (what sessions.user_id holds). */
  userId: string;
  username: string;
  template: string;
  state: V1SessionState;
  appType: string;
  namespace: string;
  platform: string;
  url: string;
  podName: string;
  memory: string;
  cpu: string;
  persistentHome: boolean;
  idleTimeout: string;
  maxSessionDuration: string;
  activeConnections: number;
  /** ISO 8601 UTC. */
  createdAt: string;
  updatedAt: string;
  lastActivity: string | null;
}

export interface V1InstallFixture {
  url: string;
  name: string;
  /** The admin first, then the users v1's CreateUser made. */
  users: V1InstallUser[];
  sessions: V1InstallSession[];
  /** catalog_templates names. */
  templates: string[];
  /** Every table v1 created (read back after creation). */
  v1Tables: string[];
  /** table → its columns right after creation (information_schema order). */
  v1Columns: Record<string, string[]>;
  /** The sessions column holding the state in this install. */
  stateColumn: 'state' | 'status';
  /** DROP DATABASE (other connections terminated first). Idempotent. */
  drop(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// The catalog (Template YAMLs of the official templates repository, as v1's sync stores them)
// ---------------------------------------------------------------------------------------------

export interface TemplateYaml {
  name: string;
  displayName: string;
  description: string;
  category: string;
  icon: string;
  baseImage: string;
  defaultResources: { memory: string; cpu: string };
  ports: Array<{ name: string; containerPort: number; protocol: string }>;
  env: Array<{ name: string; value: string }>;
  /** `vnc:` reaches the manifest; `kasmvnc:` (what most templates use) is dropped by v1's parser. */
  vnc?: { enabled: boolean; port: number; protocol: string; encryption: boolean };
  kasmvnc?: { enabled: boolean; port: number };
  capabilities: string[];
  tags: string[];
}

const LSIO_ENV = [
  { name: 'PUID', value: '1000' },
  { name: 'PGID', value: '1000' },
  { name: 'TZ', value: 'America/New_York' },
];
const icon = (img: string) => `https://raw.githubusercontent.com/linuxserver/docker-templates/master/linuxserver.io/img/${img}-logo.png`;

const CATALOG_YAML: TemplateYaml[] = [
  {
    name: 'firefox-browser',
    displayName: 'Firefox Web Browser',
    description: 'Mozilla Firefox, the free and open-source web browser, in a browser tab',
    category: 'Web Browsers',
    icon: icon('firefox'),
    baseImage: 'lscr.io/linuxserver/firefox:latest',
    defaultResources: { memory: '2Gi', cpu: '1000m' },
    ports: [{ name: 'vnc', containerPort: 3000, protocol: 'TCP' }],
    env: LSIO_ENV,
    kasmvnc: { enabled: true, port: 3000 },
    capabilities: ['Network', 'Clipboard'],
    tags: ['firefox', 'web browsers'],
  },
  {
    name: 'chrome-browser',
    displayName: 'Chromium',
    description: 'The open-source Chromium browser',
    category: 'Web Browsers',
    icon: icon('chromium'),
    baseImage: 'lscr.io/linuxserver/chromium:latest',
    defaultResources: { memory: '2Gi', cpu: '1000m' },
    ports: [{ name: 'vnc', containerPort: 3000, protocol: 'TCP' }],
    env: [...LSIO_ENV, { name: 'CHROME_CLI', value: 'https://www.google.com' }],
    vnc: { enabled: true, port: 3000, protocol: 'websocket', encryption: false },
    capabilities: ['Network', 'Audio', 'Clipboard'],
    tags: ['chromium', 'web browsers'],
  },
  {
    name: 'vscode',
    displayName: 'VS Code (code-server)',
    description: 'VS Code running on the server, used through the browser',
    category: 'Development',
    icon: icon('code-server'),
    baseImage: 'lscr.io/linuxserver/code-server:latest',
    defaultResources: { memory: '4Gi', cpu: '2000m' },
    ports: [{ name: 'http', containerPort: 8443, protocol: 'TCP' }],
    env: [...LSIO_ENV, { name: 'PASSWORD', value: 'changeme' }],
    vnc: { enabled: true, port: 8443, protocol: 'websocket', encryption: false },
    capabilities: ['Network', 'Terminal', 'Git', 'Clipboard'],
    tags: ['development', 'ide', 'code-server'],
  },
  {
    name: 'libreoffice',
    displayName: 'LibreOffice',
    description: 'Office suite: documents, spreadsheets, presentations',
    category: 'Productivity',
    icon: icon('libreoffice'),
    baseImage: 'lscr.io/linuxserver/libreoffice:latest',
    defaultResources: { memory: '2Gi', cpu: '1000m' },
    ports: [{ name: 'vnc', containerPort: 3000, protocol: 'TCP' }],
    env: LSIO_ENV,
    kasmvnc: { enabled: true, port: 3000 },
    capabilities: ['Clipboard', 'Printing'],
    tags: ['productivity', 'office'],
  },
  {
    name: 'gimp',
    displayName: 'Gimp',
    description: 'Raster graphics editor for image manipulation and drawing',
    category: 'Design & Graphics',
    icon: icon('gimp'),
    baseImage: 'lscr.io/linuxserver/gimp:latest',
    defaultResources: { memory: '4Gi', cpu: '2000m' },
    ports: [{ name: 'vnc', containerPort: 3000, protocol: 'TCP' }],
    env: LSIO_ENV,
    kasmvnc: { enabled: true, port: 3000 },
    capabilities: ['Network', 'Clipboard'],
    tags: ['gimp', 'design & graphics'],
  },
];

/** The manifest JSON v1's sync stores for a Template YAML (Go field names, zero values kept). */
export function v1CatalogManifest(t: TemplateYaml): Record<string, unknown> {
  return {
    APIVersion: 'stream.space/v1alpha1',
    Kind: 'Template',
    Metadata: { Name: t.name, Namespace: 'workspaces', Labels: null },
    Spec: {
      DisplayName: t.displayName,
      Description: t.description,
      Category: t.category,
      AppType: '',
      Icon: t.icon,
      BaseImage: t.baseImage,
      DefaultResources: { memory: t.defaultResources.memory, cpu: t.defaultResources.cpu },
      Ports: t.ports.map((p) => ({ Name: p.name, ContainerPort: p.containerPort, Protocol: p.protocol })),
      Env: t.env.map((e) => ({ name: e.name, value: e.value })),
      VolumeMounts: [{ name: 'user-home', mountPath: '/config' }],
      VNC: t.vnc ? { Enabled: t.vnc.enabled, Port: t.vnc.port, Protocol: t.vnc.protocol, Encryption: t.vnc.encryption } : null,
      WebApp: null,
      Capabilities: t.capabilities,
      Tags: t.tags,
    },
  };
}

/** name → what a session of it gets: the template's defaults and its VNC port. */
export const V1_0_0_CATALOG: Readonly<Record<string, { displayName: string; baseImage: string; memory: string; cpu: string; port: number }>> =
  Object.fromEntries(
    CATALOG_YAML.map((t) => [
      t.name,
      { displayName: t.displayName, baseImage: t.baseImage, memory: t.defaultResources.memory, cpu: t.defaultResources.cpu, port: t.ports[0].containerPort },
    ]),
  );

// ---------------------------------------------------------------------------------------------
// Deterministic helpers
// ---------------------------------------------------------------------------------------------

/** mulberry32, uniform in [0, 1). */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function bytes(rand: () => number, n: number): number[] {
  return Array.from({ length: n }, () => Math.floor(rand() * 256));
}

/** A version-4 uuid string, as github.com/google/uuid's uuid.New() formats it. */
function uuid4(rand: () => number): string {
  const b = bytes(rand, 16);
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** A `timestamp without time zone` literal in UTC (node-postgres would send a Date in local time). */
export function pgTimestamp(d: Date): string {
  return d.toISOString().replace('T', ' ').replace('Z', '');
}

const quoteIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;

function databaseUrl(adminUrl: string, name: string): string {
  const u = new URL(adminUrl);
  u.pathname = `/${encodeURIComponent(name)}`;
  return u.toString();
}

async function withClient<T>(url: string, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: url, application_name: 'streamspace-v1-install' });
  c.on('error', () => undefined);
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

async function dropDatabase(adminUrl: string, name: string): Promise<void> {
  await withClient(adminUrl, async (c) => {
    await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [name]);
    await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)}`);
  });
}

const FIRST_NAMES = [
  'alice',
  'bob',
  'carol',
  'dave',
  'erin',
  'frank',
  'grace',
  'heidi',
  'ivan',
  'judy',
  'mallory',
  'niaj',
  'olivia',
  'peggy',
  'rupert',
  'sybil',
];
const SURNAMES = ['Anderson', 'Brown', 'Clark', 'Davis', 'Evans', 'Fischer', 'Garcia', 'Hughes', 'Ivanova', 'Jones', 'Khan', 'Lopez'];

// ---------------------------------------------------------------------------------------------
// V1Writer: session writes exactly as v1.0.0's SessionDB issues them
// ---------------------------------------------------------------------------------------------

export interface V1SessionWrite {
  /** Default: uuid.New().String() (what SessionDB.CreateSession does when the id is empty). */
  id?: string;
  userId: string;
  /** '' or absent → NULL (v1's nullString). */
  teamId?: string;
  templateName: string;
  /** Default 'pending' (what the API handler writes). */
  state?: string;
  /** Default '' (the API handler leaves AppType empty; cacheSessionInDB writes 'desktop'). */
  appType?: string;
  activeConnections?: number;
  url?: string;
  namespace?: string;
  platform?: string;
  podName?: string;
  memory?: string;
  cpu?: string;
  persistentHome?: boolean;
  idleTimeout?: string;
  maxSessionDuration?: string;
  createdAt?: Date;
  updatedAt?: Date;
  lastConnection?: Date | null;
  lastDisconnect?: Date | null;
  lastActivity?: Date | null;
}

/**
 * Writes sessions the way v1.0.0 does (api/internal/db/sessions.go), on a v1 database before or
 * after our migrations. The state column is `state` (v1.0.0) or `status` (older installs), detected
 * from the table. Every method takes an optional time (v1 uses time.Now()).
 */
export class V1Writer {
  private constructor(
    readonly client: Client,
    readonly stateColumn: 'state' | 'status',
    readonly mode: 'v1.0.0' | 'legacy',
    private readonly owned: boolean,
  ) {}

  /** Connects to `url` (closed by close()). */
  static async connect(url: string, opts: { mode?: 'v1.0.0' | 'legacy' } = {}): Promise<V1Writer> {
    const c = new Client({ connectionString: url, application_name: 'streamspace-v1-writer' });
    c.on('error', () => undefined);
    await c.connect();
    try {
      return new V1Writer(c, await V1Writer.detect(c), opts.mode ?? 'v1.0.0', true);
    } catch (err) {
      await c.end().catch(() => undefined);
      throw err;
    }
  }

  /** Uses an open client (left open by close()). */
  static async on(client: Client, opts: { mode?: 'v1.0.0' | 'legacy' } = {}): Promise<V1Writer> {
    return new V1Writer(client, await V1Writer.detect(client), opts.mode ?? 'v1.0.0', false);
  }

  /**
   * `status` if the sessions table has it (an older v1 install, with or without a `state` our
   * migrations added next to it), else `state`.
   */
  static async detect(client: Client): Promise<'state' | 'status'> {
    const { rows } = await client.query<{ attname: string }>(
      `SELECT attname FROM pg_attribute WHERE attrelid = to_regclass('sessions') AND attnum > 0 AND NOT attisdropped AND attname IN ('state', 'status')`,
    );
    const names = new Set(rows.map((r) => r.attname));
    if (names.has('status')) return 'status';
    if (names.has('state')) return 'state';
    throw new Error('sessions has neither a state nor a status column');
  }

  /**
   * SessionDB.CreateSession: one INSERT of every column it knows, ON CONFLICT (id) DO UPDATE SET
   * state, url, pod_name, updated_at. In 'legacy' mode (the older fixture of ./v1-fixture.ts, whose
   * sessions table predates team_id, app_type, platform, active_connections and the connection
   * times) the same statement without those columns.
   */
  async createSession(s: V1SessionWrite, at: Date = new Date()): Promise<string> {
    const id = s.id || uuid4(Math.random);
    const ts = (d: Date | null | undefined) => (d ? pgTimestamp(d) : null);
    const values: Array<[column: string, value: unknown, v1_0_0Only?: true]> = [
      ['id', id],
      ['user_id', s.userId],
      ['team_id', s.teamId ? s.teamId : null, true],
      ['template_name', s.templateName],
      [this.stateColumn, s.state ?? 'pending'],
      ['app_type', s.appType ?? '', true],
      ['active_connections', s.activeConnections ?? 0, true],
      ['url', s.url ?? ''],
      ['namespace', s.namespace ?? 'streamspace'],
      ['platform', s.platform ?? 'kubernetes', true],
      ['pod_name', s.podName ?? ''],
      ['memory', s.memory ?? '2Gi'],
      ['cpu', s.cpu ?? '1000m'],
      ['persistent_home', s.persistentHome ?? true],
      ['idle_timeout', s.idleTimeout ?? ''],
      ['max_session_duration', s.maxSessionDuration ?? ''],
      ['created_at', ts(s.createdAt ?? at)],
      ['updated_at', ts(s.updatedAt ?? at)],
      ['last_connection', ts(s.lastConnection), true],
      ['last_disconnect', ts(s.lastDisconnect), true],
      ['last_activity', ts(s.lastActivity)],
    ];
    const used = this.mode === 'legacy' ? values.filter((v) => !v[2]) : values;
    const col = quoteIdent(this.stateColumn);
    await this.client.query(
      `INSERT INTO sessions (${used.map((v) => quoteIdent(v[0])).join(', ')})
       VALUES (${used.map((_, i) => `$${i + 1}`).join(', ')})
       ON CONFLICT (id) DO UPDATE SET
         ${col} = EXCLUDED.${col},
         url = EXCLUDED.url,
         pod_name = EXCLUDED.pod_name,
         updated_at = EXCLUDED.updated_at`,
      used.map((v) => v[1]),
    );
    return id;
  }

  /** SessionDB.UpdateSessionState: fails with "session not found" when no row matched. */
  async updateSessionState(id: string, state: string, at: Date = new Date()): Promise<void> {
    const r = await this.client.query(`UPDATE sessions SET ${quoteIdent(this.stateColumn)} = $1, updated_at = $2 WHERE id = $3`, [state, pgTimestamp(at), id]);
    if (r.rowCount === 0) throw new Error(`session not found: ${id}`);
  }

  /** SessionDB.UpdateSessionStatus / the NATS status subscriber: state, url and pod_name together. */
  async updateSessionStatus(id: string, state: string, url: string, podName: string, at: Date = new Date()): Promise<void> {
    const r = await this.client.query(`UPDATE sessions SET ${quoteIdent(this.stateColumn)} = $1, url = $2, pod_name = $3, updated_at = $4 WHERE id = $5`, [
      state,
      url,
      podName,
      pgTimestamp(at),
      id,
    ]);
    if (r.rowCount === 0) throw new Error(`session not found: ${id}`);
  }

  /** SessionDB.UpdateLastActivity (no row check, like v1). */
  async updateLastActivity(id: string, at: Date = new Date()): Promise<void> {
    await this.client.query('UPDATE sessions SET last_activity = $1, updated_at = $1 WHERE id = $2', [pgTimestamp(at), id]);
  }

  /** SessionDB.DeleteSession: the soft delete (state 'deleted'); no row check, like v1. */
  async deleteSession(id: string, at: Date = new Date()): Promise<void> {
    await this.client.query(`UPDATE sessions SET ${quoteIdent(this.stateColumn)} = 'deleted', updated_at = $1 WHERE id = $2`, [pgTimestamp(at), id]);
  }

  /** The v1 state of a session as v1 would read it back (null if there is no such row). */
  async readState(id: string): Promise<string | null> {
    const { rows } = await this.client.query(`SELECT ${quoteIdent(this.stateColumn)} AS s FROM sessions WHERE id = $1`, [id]);
    return rows.length ? (rows[0].s as string) : null;
  }

  async close(): Promise<void> {
    if (this.owned) await this.client.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// The install
// ---------------------------------------------------------------------------------------------

export async function createV1_0_0Database(adminUrl: string, opts: V1InstallOptions): Promise<V1InstallFixture> {
  const { name } = opts;
  const userCount = opts.users ?? 6;
  const perUser = opts.sessionsPerUser ?? 3;
  const rand = prng(opts.seed ?? 1);
  const now = (opts.now ?? new Date()).getTime();
  const adminPassword = opts.adminPassword ?? 'v1-admin-password';
  const url = databaseUrl(adminUrl, name);
  const installedAt = new Date(now - 120 * DAY);
  const at = (ms: number) => pgTimestamp(new Date(ms));
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rand() * xs.length)];
  const hash = (pw: string) => v1BcryptHash(pw, bytes(rand, 16));

  await dropDatabase(adminUrl, name);
  await withClient(adminUrl, (c) => c.query(`CREATE DATABASE ${quoteIdent(name)}`));
  let dropped: Promise<void> | undefined;
  const drop = () => (dropped ??= dropDatabase(adminUrl, name));

  try {
    return await withClient(url, async (c) => {
      // 1. v1's Migrate() at first start, with ADMIN_PASSWORD set.
      await applyV1_0_0Schema(c, { adminPassword, hashPassword: hash });
      // The rows it seeded carry the moment of install.
      const t0 = at(installedAt.getTime());
      await c.query(
        `UPDATE users SET created_at = $1, updated_at = $1 WHERE id = 'admin';
         UPDATE user_quotas SET created_at = $1, updated_at = $1 WHERE user_id = 'admin';
         UPDATE groups SET created_at = $1, updated_at = $1;
         UPDATE group_memberships SET created_at = $1;
         UPDATE team_role_permissions SET created_at = $1;
         UPDATE repositories SET created_at = $1, updated_at = $1;
         UPDATE configuration SET updated_at = $1;
         UPDATE licenses SET issued_at = $1, activated_at = $1, created_at = $1, updated_at = $1, expires_at = $1::timestamp + INTERVAL '100 years'`.replace(
          /\$1/g,
          `'${t0}'`,
        ),
      );
      const stateColumn: 'state' | 'status' = opts.statusColumn ? 'status' : 'state';
      if (opts.statusColumn) await c.query('ALTER TABLE sessions RENAME COLUMN state TO status');

      // 2. The Kubernetes controller registers.
      const ctrlAt = installedAt.getTime() + 5 * MINUTE;
      await c.query(
        `INSERT INTO platform_controllers (id, controller_id, platform, display_name, status, version, capabilities, cluster_info, last_heartbeat, created_at, updated_at)
         VALUES ($1, $2, 'kubernetes', 'kubernetes Controller', 'connected', 'v1.0.0', $3, $4, $5, $6, $6)`,
        [
          `ctrl_${BigInt(ctrlAt) * 1_000_000n}`,
          'k8s-controller-streamspace',
          JSON.stringify(['sessions', 'templates', 'hibernation']),
          JSON.stringify({ namespace: 'streamspace', cluster: 'default' }),
          at(now - 20_000),
          at(ctrlAt),
        ],
      );

      // 3. The repository sync fills the catalog from 'Official Templates'.
      const syncAt = installedAt.getTime() + 10 * MINUTE;
      const repo = await c.query<{ id: number }>('SELECT id FROM repositories WHERE name = $1', [V1_TEMPLATES_REPOSITORY.name]);
      const repoId = repo.rows[0].id;
      for (const t of CATALOG_YAML) {
        await c.query(
          `INSERT INTO catalog_templates (repository_id, name, display_name, description, category, app_type, icon_url, manifest, tags, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, 'desktop', $6, $7, $8, $9, $9)`,
          [repoId, t.name, t.displayName, t.description, t.category, t.icon, JSON.stringify(v1CatalogManifest(t)), t.tags, at(syncAt)],
        );
      }
      await c.query(`UPDATE repositories SET last_sync = $1, template_count = $2, updated_at = $1 WHERE id = $3`, [
        at(syncAt + 1000),
        CATALOG_YAML.length,
        repoId,
      ]);
      await c.query(`UPDATE repositories SET status = 'synced', error_message = '', updated_at = $1 WHERE id = $2`, [at(syncAt + 1000), repoId]);

      // 4. Users, as CreateUser makes them (quota row, all_users membership).
      const users: V1InstallUser[] = [{ ...V1_ADMIN, role: 'admin', active: true, password: adminPassword }];
      for (let i = 0; i < userCount; i++) {
        const first = i < FIRST_NAMES.length ? FIRST_NAMES[i] : `user${i + 1}`;
        const u: V1InstallUser = {
          id: uuid4(rand),
          username: first,
          email: `${first}@example.com`,
          fullName: i % 5 === 4 ? '' : `${first[0].toUpperCase()}${first.slice(1)} ${pick(SURNAMES)}`,
          role: i % 4 === 3 ? 'admin' : 'user',
          active: true,
          password: `${first}-pw-${Math.floor(rand() * 1e6)}`,
        };
        const created = installedAt.getTime() + (1 + i) * DAY + Math.floor(rand() * HOUR);
        await c.query(
          `INSERT INTO users (id, username, email, full_name, role, provider, password_hash, active, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, 'local', $6, true, $7, $7)`,
          [u.id, u.username, u.email, u.fullName, u.role, hash(u.password), at(created)],
        );
        await c.query(
          `INSERT INTO user_quotas (user_id, max_sessions, max_cpu, max_memory, max_storage, used_sessions, used_cpu, used_memory, used_storage, created_at, updated_at)
           VALUES ($1, 5, '4000m', '16Gi', '100Gi', 0, '0', '0', '0', $2, $2)`,
          [u.id, at(created)],
        );
        await c.query(
          `INSERT INTO group_memberships (id, user_id, group_id, role, created_at)
           SELECT $1, $2, id, 'member', $3 FROM groups WHERE name = $4
           ON CONFLICT (user_id, group_id) DO NOTHING`,
          [uuid4(rand), u.id, at(created), V1_ALL_USERS_GROUP.name],
        );
        users.push(u);
      }
      if (userCount > 0) {
        // The last one left; an admin deactivated the account.
        const gone = users[users.length - 1];
        gone.active = false;
        await c.query('UPDATE users SET active = false, updated_at = $1 WHERE id = $2', [at(now - 7 * DAY), gone.id]);
      }

      // 5. Sessions and what the API logged about them.
      const writer = await V1Writer.on(c);
      const templates = CATALOG_YAML.map((t) => t.name);
      const sessions: V1InstallSession[] = [];
      const audit: Array<{ userId: string; method: string; path: string; status: number; at: number }> = [];
      let k = Math.floor(rand() * V1_SESSION_STATES.length);
      const ordered = [...users.filter((u) => u.active), ...users.filter((u) => !u.active)];
      for (const u of ordered) {
        let lastLogin = 0;
        for (let j = 0; j < perUser; j++) {
          let state: V1SessionState = V1_SESSION_STATES[k++ % V1_SESSION_STATES.length];
          if (!u.active) state = j % 2 === 0 ? 'terminated' : 'deleted';
          const template = templates[(sessions.length + Math.floor(rand() * templates.length)) % templates.length];
          const tpl = V1_0_0_CATALOG[template];
          const id = `${u.username}-${template}-${uuid4(rand).slice(0, 8)}`;
          // pending: just asked for; running: active within the hour; the rest: some days ago.
          const created =
            state === 'pending'
              ? now - Math.floor(rand() * 4 * MINUTE) - 30_000
              : state === 'running'
                ? now - Math.floor((1 + rand() * 47) * HOUR)
                : now - Math.floor((2 + rand() * 60) * DAY);
          const big = rand() < 0.25;
          const fromCache = sessions.length % 3 === 2;
          const started = state !== 'pending';
          const lastActivity =
            state === 'pending' ? null : state === 'running' ? now - Math.floor(rand() * 50 * MINUTE) : created + Math.floor((0.5 + rand() * 6) * HOUR);
          const updated = state === 'pending' ? created : state === 'running' ? (lastActivity as number) : (lastActivity as number) + Math.floor(rand() * HOUR);
          const s: V1InstallSession = {
            id,
            userId: u.id,
            username: u.username,
            template,
            state,
            appType: fromCache ? 'desktop' : '',
            namespace: 'streamspace',
            platform: 'kubernetes',
            url: started ? `https://${id}.streamspace.local` : '',
            podName: started ? `ss-${u.username}-${template}` : '',
            memory: big ? '4Gi' : tpl.memory,
            cpu: big ? '2000m' : tpl.cpu,
            persistentHome: rand() < 0.85,
            idleTimeout: fromCache || rand() < 0.5 ? '30m' : '',
            maxSessionDuration: fromCache || rand() < 0.5 ? '8h' : '',
            activeConnections: state === 'running' ? Math.floor(rand() * 3) : 0,
            createdAt: new Date(created).toISOString(),
            updatedAt: new Date(updated).toISOString(),
            lastActivity: lastActivity === null ? null : new Date(lastActivity).toISOString(),
          };
          await writer.createSession(
            {
              id,
              userId: s.userId,
              templateName: template,
              state: state === 'deleted' ? 'terminated' : state,
              appType: s.appType,
              activeConnections: s.activeConnections,
              url: s.url,
              namespace: s.namespace,
              platform: s.platform,
              podName: s.podName,
              memory: s.memory,
              cpu: s.cpu,
              persistentHome: s.persistentHome,
              idleTimeout: s.idleTimeout,
              maxSessionDuration: s.maxSessionDuration,
              createdAt: new Date(created),
              updatedAt: new Date(updated),
              lastConnection: started ? new Date(created + 20_000) : null,
              lastDisconnect: started && state !== 'running' ? new Date(lastActivity as number) : null,
              lastActivity: lastActivity === null ? null : new Date(lastActivity),
            },
            new Date(updated),
          );
          if (state === 'deleted') await writer.deleteSession(id, new Date(updated));
          sessions.push(s);
          const login = created - 2 * MINUTE;
          lastLogin = Math.max(lastLogin, login);
          audit.push({ userId: '', method: 'POST', path: '/api/v1/auth/login', status: 200, at: login });
          audit.push({ userId: u.id, method: 'POST', path: '/api/v1/sessions', status: 202, at: created - 100 });
          audit.push({ userId: u.id, method: 'GET', path: '/api/v1/sessions', status: 200, at: created + 1000 });
          if (state === 'deleted') audit.push({ userId: u.id, method: 'DELETE', path: `/api/v1/sessions/${id}`, status: 202, at: updated - 500 });
        }
        if (lastLogin) await c.query('UPDATE users SET last_login = $1, updated_at = $1 WHERE id = $2 AND active', [at(lastLogin), u.id]);
      }
      // A failed login and an anonymous health probe.
      audit.push({ userId: '', method: 'POST', path: '/api/v1/auth/login', status: 401, at: now - 3 * HOUR });
      audit.push({ userId: '', method: 'GET', path: '/api/v1/version', status: 200, at: now - 2 * HOUR });
      audit.sort((a, b) => a.at - b.at);
      for (const e of audit) {
        const changes = {
          duration_ms: 1 + Math.floor(rand() * 40),
          error: '',
          metadata: null,
          method: e.method,
          path: e.path,
          request_body: null,
          response_body: null,
          status_code: e.status,
        };
        await c.query(
          `INSERT INTO audit_log (user_id, action, resource_type, resource_id, changes, timestamp, ip_address)
           VALUES ($1, $2, $3, '', $4, $5, $6)`,
          [e.userId, e.method, e.path, JSON.stringify(changes), at(e.at), `10.42.${Math.floor(rand() * 4)}.${2 + Math.floor(rand() * 250)}`],
        );
      }

      // 6. Optionally a purchased license, activated over the community one.
      if (opts.proLicense) {
        const issued = now - 30 * DAY;
        await c.query(
          `INSERT INTO licenses (license_key, tier, features, max_users, max_sessions, max_nodes, issued_at, expires_at, activated_at, status, metadata)
           VALUES ($1, 'pro', $2, 100, 500, 10, $3, $4, NULL, 'inactive', $5)`,
          [
            `PRO-${uuid4(rand).toUpperCase()}`,
            JSON.stringify({ basic_auth: true, saml: true, oidc: true, mfa: true, recordings: true, advanced_compliance: false, priority_support: true }),
            at(issued),
            at(issued + 365 * DAY),
            JSON.stringify({ customer: 'Example Corp', seats: 100 }),
          ],
        );
        await c.query(`UPDATE licenses SET status = 'inactive' WHERE status = 'active'`);
        await c.query(`UPDATE licenses SET status = 'active', activated_at = $1, updated_at = $1 WHERE tier = 'pro'`, [at(issued + HOUR)]);
      }

      // 7. What v1 created, as the migration will find it.
      const { rows } = await c.query<{ table_name: string; column_name: string }>(
        `SELECT c.table_name, c.column_name
           FROM information_schema.columns c
           JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
          WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'
          ORDER BY c.table_name, c.ordinal_position`,
      );
      const v1Columns: Record<string, string[]> = {};
      for (const r of rows) (v1Columns[r.table_name] ??= []).push(r.column_name);
      const created = new Set(Object.keys(v1Columns));
      const v1Tables = V1_0_0_TABLES.filter((t) => created.has(t));
      if (v1Tables.length !== created.size) {
        throw new Error(`unexpected tables after v1's schema: ${[...created].filter((t) => !V1_0_0_TABLES.includes(t)).join(', ')}`);
      }

      return { url, name, users, sessions, templates, v1Tables, v1Columns, stateColumn, drop };
    });
  } catch (err) {
    await drop().catch(() => undefined);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Before/after comparison of v1's own data
// ---------------------------------------------------------------------------------------------

export interface V1TableState {
  count: number;
  /** md5 over the rows' v1 columns (order-independent); null when the table or a column is gone. */
  checksum: string | null;
  /** v1 columns that no longer exist. */
  missingColumns?: string[];
  /** The table itself no longer exists. */
  missingTable?: true;
}

/**
 * Per v1 table: row count and a checksum over v1's own columns only, so columns added later (by
 * our migrations) do not change it, while any change to a v1 value, a lost row or a renamed or
 * dropped v1 column does.
 */
export async function v1TableStates(url: string, v1Columns: Record<string, string[]>): Promise<Record<string, V1TableState>> {
  return withClient(url, async (c) => {
    // Fixed text forms for the types v1 uses.
    await c.query(`SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; SET TimeZone = 'UTC'`);
    const { rows } = await c.query<{ table_name: string; column_name: string }>(
      `SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()`,
    );
    const present = new Map<string, Set<string>>();
    for (const r of rows) {
      if (!present.has(r.table_name)) present.set(r.table_name, new Set());
      present.get(r.table_name)!.add(r.column_name);
    }
    const out: Record<string, V1TableState> = {};
    for (const [table, cols] of Object.entries(v1Columns)) {
      const have = present.get(table);
      if (!have) {
        out[table] = { count: -1, checksum: null, missingTable: true };
        continue;
      }
      const missing = cols.filter((col) => !have.has(col));
      const t = quoteIdent(table);
      if (missing.length) {
        const n = await c.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t}`);
        out[table] = { count: n.rows[0].n, checksum: null, missingColumns: missing };
        continue;
      }
      const tuple = cols.map((col) => `x.${quoteIdent(col)}`).join(', ');
      const r = await c.query<{ n: number; sum: string }>(
        `SELECT count(*)::int AS n, md5(coalesce(string_agg(h, '' ORDER BY h), '')) AS sum
           FROM (SELECT md5(row(${tuple})::text) AS h FROM ${t} x) rows`,
      );
      out[table] = { count: r.rows[0].n, checksum: r.rows[0].sum };
    }
    return out;
  });
}
