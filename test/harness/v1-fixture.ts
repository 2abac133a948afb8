/**
 * A StreamSpace v1 install to migrate from, on the real services: a v1 PostgreSQL database (users,
 * the template catalog, 200+ sessions; optionally with the old `status` column), v1 CRDs and
 * objects on a real kube-apiserver (see ./kube.ts), and a stand-in for the v1 API.
 *
 * Everything is deterministic for a given seed (and `now`): ids, users, templates, states,
 * resources and timestamps come from a seeded PRNG, and the database rows' UUIDs are derived from
 * their names.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { V1CustomResourceDefinition } from '@kubernetes/client-node';
import { Client } from 'pg';
import { loadKubeClient } from './kube';

// ---------------------------------------------------------------------------------------------
// Data model
// ---------------------------------------------------------------------------------------------

export type V1State = 'running' | 'hibernated' | 'terminated';

/** What createV1Cluster needs of a session; the optional fields default as v1 did. */
export interface V1SessionSeed {
  id: string;
  user: string;
  template: string;
  state: V1State;
  namespace?: string;
  memory?: string | null;
  cpu?: string | null;
  persistentHome?: boolean;
  idleTimeout?: string;
  maxSessionDuration?: string;
  podName?: string | null;
  url?: string | null;
  lastActivity?: string | null;
  createdAt?: string;
  tags?: string[];
}

/** A v1 session as written to the database (and, by createV1Cluster, as a Session CR). */
export interface V1Session extends V1SessionSeed {
  namespace: string;
  memory: string;
  cpu: string;
  persistentHome: boolean;
  idleTimeout: string;
  maxSessionDuration: string;
  podName: string | null;
  url: string;
  /** ISO 8601, UTC. */
  lastActivity: string;
  /** ISO 8601, UTC. */
  createdAt: string;
  tags: string[];
}

export interface V1User {
  id: string;
  username: string;
  email: string;
  role: 'admin' | 'user';
}

export interface V1TemplateSpec {
  displayName: string;
  description: string;
  category: string;
  icon: string;
  baseImage: string;
  defaultResources: { memory: string; cpu: string };
  ports: Array<{ name: string; containerPort: number; protocol?: string }>;
  env: Array<{ name: string; value: string }>;
  volumeMounts: Array<{ name: string; mountPath: string }>;
  kasmvnc: { enabled: boolean; port: number };
  capabilities: string[];
  tags: string[];
}

export const V1_GROUP = 'stream.space';
export const V1_VERSION = 'v1alpha1';
/** Namespaces v1 used: `streamspace`, and `workspaces` on older installs. */
export const V1_NAMESPACES = ['streamspace', 'workspaces'] as const;

export const V1_USERS: ReadonlyArray<Omit<V1User, 'id'>> = [
  { username: 'admin', email: 'admin@streamspace.local', role: 'admin' },
  { username: 'alice', email: 'alice@example.com', role: 'user' },
  { username: 'bob', email: 'bob@example.com', role: 'user' },
  { username: 'carol', email: 'carol@example.com', role: 'user' },
  { username: 'dan', email: 'dan@example.com', role: 'admin' },
  { username: 'erin', email: 'erin@example.com', role: 'user' },
];

function templateSpec(displayName: string, description: string, category: string, image: string, capabilities: string[], tags: string[]): V1TemplateSpec {
  return {
    displayName,
    description,
    category,
    icon: `https://raw.githubusercontent.com/linuxserver/docker-templates/master/linuxserver.io/img/${image}-logo.png`,
    baseImage: `lscr.io/linuxserver/${image}:latest`,
    defaultResources: { memory: '2Gi', cpu: '1000m' },
    ports: [{ name: 'vnc', containerPort: 3000 }],
    env: [],
    volumeMounts: [{ name: 'user-home', mountPath: '/config' }],
    kasmvnc: { enabled: true, port: 3000 },
    capabilities,
    tags,
  };
}

/** The v1 template catalog: name → v1 Template spec (also the catalog's JSONB manifest). */
export const V1_TEMPLATES: Readonly<Record<string, V1TemplateSpec>> = {
  'firefox-browser': templateSpec(
    'Firefox Web Browser',
    'Mozilla Firefox, streamed to the browser with KasmVNC',
    'Web Browsers',
    'firefox',
    ['Network', 'Audio', 'Clipboard'],
    ['browser', 'web', 'privacy'],
  ),
  'chrome-browser': templateSpec(
    'Chromium Web Browser',
    'The open-source Chromium browser, streamed with KasmVNC',
    'Web Browsers',
    'chromium',
    ['Network', 'Audio', 'Clipboard'],
    ['browser', 'web', 'chrome'],
  ),
  vscode: templateSpec(
    'VS Code (VSCodium)',
    'Visual Studio Code without telemetry, for development in the browser',
    'Development',
    'vscodium',
    ['Network', 'Clipboard'],
    ['development', 'ide', 'editor'],
  ),
  libreoffice: templateSpec(
    'LibreOffice',
    'The LibreOffice suite: Writer, Calc, Impress and Draw',
    'Productivity',
    'libreoffice',
    ['Clipboard', 'Printing'],
    ['office', 'documents', 'spreadsheets'],
  ),
};
export const V1_TEMPLATE_NAMES = Object.keys(V1_TEMPLATES);

/** Deterministic UUID (v4-shaped) from a string, so the fixture's rows are the same every run. */
function uuidFrom(s: string): string {
  const h = createHash('md5').update(s).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${((parseInt(h[16], 16) & 0x3) | 0x8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
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

const DAY = 86_400_000;
const RESOURCE_CHOICES: Array<{ memory: string; cpu: string; weight: number }> = [
  { memory: '2Gi', cpu: '1000m', weight: 6 }, // the templates' defaults
  { memory: '4Gi', cpu: '2000m', weight: 2 },
  { memory: '1Gi', cpu: '500m', weight: 1 },
  { memory: '8Gi', cpu: '4', weight: 1 },
];
const TAG_CHOICES: string[][] = [[], [], ['team-a'], ['team-b'], ['research'], ['team-a', 'research']];

function pickWeighted<T extends { weight: number }>(rand: () => number, items: T[]): T {
  const total = items.reduce((n, x) => n + x.weight, 0);
  let r = rand() * total;
  for (const x of items) {
    r -= x.weight;
    if (r < 0) return x;
  }
  return items[items.length - 1];
}

/**
 * The v1 sessions of a fixture, without touching any service: every user × template pair once
 * first (so every user and template has sessions), then a seeded random mix; states ~45% running,
 * ~35% hibernated, ~20% terminated; created over the past 30 days.
 */
export function generateV1Sessions(count: number, seed: number, now: Date): V1Session[] {
  const rand = prng(seed);
  const users = V1_USERS.map((u) => u.username);
  const pairs = users.flatMap((u) => V1_TEMPLATE_NAMES.map((t) => [u, t] as const));
  const perPair = new Map<string, number>();
  const hex = (n: number) => Array.from({ length: n }, () => Math.floor(rand() * 16).toString(16)).join('');
  const alnum = (n: number) => Array.from({ length: n }, () => 'bcdfghjklmnpqrstvwxz2456789'[Math.floor(rand() * 27)]).join('');
  const out: V1Session[] = [];
  for (let i = 0; i < count; i++) {
    const [user, template] = i < pairs.length ? pairs[i] : pairs[Math.floor(rand() * pairs.length)];
    const n = (perPair.get(`${user}/${template}`) ?? 0) + 1;
    perPair.set(`${user}/${template}`, n);
    const id = `ss-${user}-${template}-${n}`;
    const r = rand();
    const state: V1State = r < 0.45 ? 'running' : r < 0.8 ? 'hibernated' : 'terminated';
    const res = pickWeighted(rand, RESOURCE_CHOICES);
    const created = now.getTime() - Math.floor(rand() * 30 * DAY);
    // Running sessions were active in the last hour; others some time after they were created.
    const last = state === 'running' ? now.getTime() - Math.floor(rand() * 3_600_000) : created + Math.floor(rand() * (now.getTime() - created));
    out.push({
      id,
      user,
      template,
      state,
      namespace: 'streamspace',
      memory: res.memory,
      cpu: res.cpu,
      persistentHome: rand() < 0.85,
      idleTimeout: '30m',
      maxSessionDuration: '8h',
      // v1 Deployment `ss-<user>-<template>` → its pod; a terminated session has none left.
      podName: state === 'terminated' ? null : `ss-${user}-${template}-${hex(10)}-${alnum(5)}`,
      url: `http://${id}.streamspace.svc:3000`,
      lastActivity: new Date(Math.min(last, now.getTime())).toISOString(),
      createdAt: new Date(created).toISOString(),
      tags: TAG_CHOICES[Math.floor(rand() * TAG_CHOICES.length)],
    });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// v1 database
// ---------------------------------------------------------------------------------------------

export interface V1DbOptions {
  /** Database name (created; must not exist). */
  name: string;
  /** true: v1 installs whose sessions table has `status` instead of `state`. */
  statusColumn?: boolean;
  /** Number of session rows (default 220). */
  sessions?: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /** "Now" for the timestamps (default: the current time). Pass it to get byte-identical rows. */
  now?: Date;
}

export interface V1DbFixture {
  /** postgres:// URL of the v1 database. */
  url: string;
  name: string;
  /** Read back from the database after the inserts. */
  counts: { users: number; templates: number; sessions: number };
  sessionIds: string[];
  /** The session rows as inserted: pass to createV1Cluster({sessions}). */
  sessions: V1Session[];
  users: V1User[];
  templates: string[];
  /** 'status' or 'state'. */
  stateColumn: 'status' | 'state';
  /** DROP DATABASE (terminating other connections first). Idempotent. */
  drop(): Promise<void>;
}

const quoteIdent = (s: string) => `"${s.replace(/"/g, '""')}"`;

function databaseUrl(adminUrl: string, name: string): string {
  const u = new URL(adminUrl);
  u.pathname = `/${encodeURIComponent(name)}`;
  return u.toString();
}

async function withClient<T>(url: string, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: url, application_name: 'streamspace-v1-fixture' });
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

/** The v1 schema (as migrations/000_v1_baseline.sql models it; sessions.id TEXT, no schema_migrations). */
function v1Schema(stateColumn: 'status' | 'state'): string {
  return `
CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    username VARCHAR(255) UNIQUE NOT NULL,
    email VARCHAR(255),
    role VARCHAR(50) NOT NULL DEFAULT 'user',
    password_hash TEXT,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);
CREATE TABLE templates (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) UNIQUE NOT NULL,
    display_name VARCHAR(255) NOT NULL,
    description TEXT,
    category VARCHAR(100),
    icon TEXT,
    manifest JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    user_id VARCHAR(255) NOT NULL,
    template_name VARCHAR(255) NOT NULL,
    ${stateColumn} VARCHAR(50) DEFAULT 'running',
    url TEXT,
    namespace VARCHAR(255) DEFAULT 'streamspace',
    pod_name VARCHAR(255),
    memory VARCHAR(50),
    cpu VARCHAR(50),
    persistent_home BOOLEAN DEFAULT TRUE,
    idle_timeout VARCHAR(50) DEFAULT '30m',
    max_session_duration VARCHAR(50) DEFAULT '8h',
    last_activity TIMESTAMP,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);
CREATE INDEX idx_sessions_user_id ON sessions(user_id);
`;
}

/** Multi-row INSERT with positional parameters. */
function insertSql(table: string, columns: string[], rows: unknown[][]): { text: string; values: unknown[] } {
  const values: unknown[] = [];
  const tuples = rows.map((r) => `(${r.map((v) => `$${values.push(v)}`).join(', ')})`);
  return { text: `INSERT INTO ${table} (${columns.join(', ')}) VALUES ${tuples.join(',\n')}`, values };
}

/** `timestamp without time zone` from an ISO UTC string (PostgreSQL ignores the zone; keep it UTC). */
const ts = (iso: string) => iso.replace('T', ' ').replace('Z', '');

export async function createV1Database(adminUrl: string, opts: V1DbOptions): Promise<V1DbFixture> {
  const { name } = opts;
  const count = opts.sessions ?? 220;
  const seed = opts.seed ?? 1;
  const now = opts.now ?? new Date();
  const stateColumn = opts.statusColumn ? 'status' : 'state';
  const url = databaseUrl(adminUrl, name);

  await withClient(adminUrl, (c) => c.query(`CREATE DATABASE ${quoteIdent(name)}`));
  let dropped: Promise<void> | undefined;
  const drop = () => (dropped ??= dropDatabase(adminUrl, name));

  try {
    const base = now.getTime();
    const users: V1User[] = V1_USERS.map((u) => ({ ...u, id: uuidFrom(`v1-user:${u.username}`) }));
    const sessions = generateV1Sessions(count, seed, now);
    const counts = await withClient(url, async (c) => {
      await c.query('BEGIN');
      await c.query(v1Schema(stateColumn));
      const userCreated = ts(new Date(base - 90 * DAY).toISOString());
      await c.query(
        insertSql(
          'users',
          ['id', 'username', 'email', 'role', 'password_hash', 'created_at', 'updated_at'],
          users.map((u, i) => [u.id, u.username, u.email, u.role, 'v1-hash', userCreated, ts(new Date(base - (60 - i) * DAY).toISOString())]),
        ),
      );
      const tplCreated = ts(new Date(base - 120 * DAY).toISOString());
      await c.query(
        insertSql(
          'templates',
          ['id', 'name', 'display_name', 'description', 'category', 'icon', 'manifest', 'created_at', 'updated_at'],
          Object.entries(V1_TEMPLATES).map(([tname, spec]) => [
            uuidFrom(`v1-template:${tname}`),
            tname,
            spec.displayName,
            spec.description,
            spec.category,
            spec.icon,
            JSON.stringify(spec),
            tplCreated,
            tplCreated,
          ]),
        ),
      );
      const columns = [
        'id',
        'user_id',
        'template_name',
        stateColumn,
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
      ];
      for (let i = 0; i < sessions.length; i += 500) {
        await c.query(
          insertSql(
            'sessions',
            columns,
            sessions
              .slice(i, i + 500)
              .map((s) => [
                s.id,
                s.user,
                s.template,
                s.state,
                s.url,
                s.namespace,
                s.podName,
                s.memory,
                s.cpu,
                s.persistentHome,
                s.idleTimeout,
                s.maxSessionDuration,
                ts(s.lastActivity),
                ts(s.createdAt),
                ts(s.lastActivity),
              ]),
          ),
        );
      }
      await c.query('COMMIT');
      const r = await c.query(
        'SELECT (SELECT count(*) FROM users)::int AS users, (SELECT count(*) FROM templates)::int AS templates, (SELECT count(*) FROM sessions)::int AS sessions',
      );
      return r.rows[0] as { users: number; templates: number; sessions: number };
    });
    return {
      url,
      name,
      counts,
      sessionIds: sessions.map((s) => s.id),
      sessions,
      users,
      templates: [...V1_TEMPLATE_NAMES],
      stateColumn,
      drop,
    };
  } catch (err) {
    await drop().catch(() => undefined);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// v1 objects on the Kubernetes API
// ---------------------------------------------------------------------------------------------

export interface V1ClusterOptions {
  sessions: V1SessionSeed[];
  /** Add malformed Session CRs, one with an unknown template and a duplicate id in `workspaces`. */
  extraBad?: boolean;
}

export interface V1ClusterFixture {
  /** Session CRs that must fail to import, with a substring of the expected reason. */
  badIds: Array<{ id: string; namespace: string; reason: string }>;
  /** Ids that exist as a Session CR in both `streamspace` and `workspaces`. */
  duplicateIds: string[];
  /** What countCrds() returns right after creation. */
  expected: { sessions: number; templates: number };
  /** Every Deployment in the cluster: 'namespace/name' → spec.replicas. */
  deploymentReplicas(): Promise<Record<string, number>>;
  /** Session and Template CRs in `streamspace` + `workspaces`; rejects (404) once the CRDs are gone. */
  countCrds(): Promise<{ sessions: number; templates: number }>;
}

/** v1 Deployments (namespace/name → replicas) created by createV1Cluster. */
export const V1_DEPLOYMENTS: Readonly<Record<string, number>> = {
  'streamspace/streamspace-api': 2,
  'streamspace/streamspace-controller': 1,
};
/** v2 Deployments created by createV1Cluster (standing by, as in a blue-green install). */
export const V2_DEPLOYMENTS: Readonly<Record<string, number>> = {
  'streamspace-v2/streamspace-control-plane': 4,
  'streamspace-v2/streamspace-worker': 2,
  'streamspace/streamspace-k8s-agent': 5,
};
const IMAGES: Record<string, string> = {
  'streamspace-api': 'ghcr.io/streamspace/streamspace-api:v1.2.0',
  'streamspace-controller': 'ghcr.io/streamspace/streamspace-controller:v1.2.0',
  'streamspace-control-plane': 'ghcr.io/streamspace/control-plane:2.0.0',
  'streamspace-worker': 'ghcr.io/streamspace/control-plane:2.0.0',
  'streamspace-k8s-agent': 'ghcr.io/streamspace/k8s-agent:2.0.0',
};

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const codeOf = (err: unknown) => (err as { code?: number }).code;

async function ignoreConflict<T>(p: Promise<T>): Promise<T | undefined> {
  try {
    return await p;
  } catch (err) {
    if (codeOf(err) === 409) return undefined;
    throw err;
  }
}

/** Runs fn over items with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

function crdBody(kind: string, plural: string, shortName: string): V1CustomResourceDefinition & { metadata: { name: string } } {
  // Through the typed client: its serializer maps x_kubernetes_preserve_unknown_fields to
  // `x-kubernetes-preserve-unknown-fields` (and drops the JSON spelling: the API would then prune
  // every field of spec and status).
  const preserve = { type: 'object', x_kubernetes_preserve_unknown_fields: true };
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${plural}.${V1_GROUP}`, labels: { 'app.kubernetes.io/part-of': 'streamspace' } },
    spec: {
      group: V1_GROUP,
      scope: 'Namespaced',
      names: { kind, listKind: `${kind}List`, plural, singular: kind.toLowerCase(), shortNames: [shortName] },
      versions: [
        {
          name: V1_VERSION,
          served: true,
          storage: true,
          schema: { openAPIV3Schema: { type: 'object', properties: { spec: preserve, status: preserve } } },
          subresources: { status: {} },
          additionalPrinterColumns:
            kind === 'Session'
              ? [
                  { name: 'User', type: 'string', jsonPath: '.spec.user' },
                  { name: 'Template', type: 'string', jsonPath: '.spec.template' },
                  { name: 'State', type: 'string', jsonPath: '.spec.state' },
                  { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
                ]
              : [
                  { name: 'Display-Name', type: 'string', jsonPath: '.spec.displayName' },
                  { name: 'Category', type: 'string', jsonPath: '.spec.category' },
                ],
        },
      ],
    },
  };
}

interface CrToCreate {
  plural: 'sessions' | 'templates';
  kind: 'Session' | 'Template';
  namespace: string;
  name: string;
  labels?: Record<string, string>;
  spec: Record<string, unknown>;
  status?: Record<string, unknown>;
}

const PHASE: Record<V1State, string> = { running: 'Running', hibernated: 'Hibernated', terminated: 'Terminated' };

function sessionCr(s: V1SessionSeed, namespace = s.namespace ?? 'streamspace'): CrToCreate {
  const tpl = V1_TEMPLATES[s.template];
  const memory = s.memory ?? tpl?.defaultResources.memory ?? '2Gi';
  const cpu = s.cpu ?? tpl?.defaultResources.cpu ?? '1000m';
  const lastActivity = s.lastActivity ?? new Date().toISOString();
  const running = s.state === 'running';
  return {
    plural: 'sessions',
    kind: 'Session',
    namespace,
    name: s.id,
    labels: { 'app.kubernetes.io/managed-by': 'streamspace', 'stream.space/user': s.user, 'stream.space/template': s.template },
    spec: {
      user: s.user,
      template: s.template,
      state: s.state,
      resources: { memory, cpu },
      persistentHome: s.persistentHome ?? true,
      idleTimeout: s.idleTimeout ?? '30m',
      maxSessionDuration: s.maxSessionDuration ?? '8h',
      tags: s.tags ?? [],
    },
    status: {
      phase: PHASE[s.state],
      ...(s.podName === null || s.state === 'terminated' ? {} : { podName: s.podName ?? `ss-${s.user}-${s.template}-0` }),
      url: s.url ?? `http://${s.id}.${namespace}.svc:3000`,
      lastActivity,
      ...(running ? { resourceUsage: { memory: '612Mi', cpu: '180m' } } : {}),
      conditions: [{ type: 'Ready', status: running ? 'True' : 'False', reason: PHASE[s.state], lastTransitionTime: lastActivity }],
    },
  };
}

function deploymentBody(name: string, replicas: number, version: string) {
  const labels = { app: name, 'app.kubernetes.io/part-of': 'streamspace', 'app.kubernetes.io/version': version };
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name, labels },
    spec: {
      replicas,
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels },
        spec: { containers: [{ name, image: IMAGES[name] ?? `ghcr.io/streamspace/${name}:${version}` }] },
      },
    },
  };
}

export async function createV1Cluster(kubeconfigYaml: string, opts: V1ClusterOptions): Promise<V1ClusterFixture> {
  const k8s = loadKubeClient();
  const kc = new k8s.KubeConfig();
  kc.loadFromString(kubeconfigYaml);
  const core = kc.makeApiClient(k8s.CoreV1Api);
  const apps = kc.makeApiClient(k8s.AppsV1Api);
  const ext = kc.makeApiClient(k8s.ApiextensionsV1Api);
  const custom = kc.makeApiClient(k8s.CustomObjectsApi);

  for (const name of [...V1_NAMESPACES, 'streamspace-v2']) {
    await ignoreConflict(core.createNamespace({ body: { metadata: { name } } }));
  }

  // CRDs, then wait until both are Established.
  const crds = [crdBody('Session', 'sessions', 'ss'), crdBody('Template', 'templates', 'tpl')];
  for (const body of crds) await ignoreConflict(ext.createCustomResourceDefinition({ body }));
  for (const body of crds) {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const c = await ext.readCustomResourceDefinition({ name: body.metadata.name });
      if (c.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True')) break;
      if (Date.now() > deadline) throw new Error(`CRD ${body.metadata.name} not Established after 30 s`);
      await sleep(50);
    }
  }

  // Template CRs, Session CRs (and the extra bad ones).
  const objects: CrToCreate[] = Object.entries(V1_TEMPLATES).map(([name, spec]) => ({
    plural: 'templates',
    kind: 'Template',
    namespace: 'streamspace',
    name,
    labels: { 'app.kubernetes.io/managed-by': 'streamspace' },
    spec: { ...spec },
  }));
  objects.push(...opts.sessions.map((s) => sessionCr(s)));
  const badIds: V1ClusterFixture['badIds'] = [];
  const duplicateIds: string[] = [];
  if (opts.extraBad) {
    const bad = (namespace: string, name: string, reason: string, spec: Record<string, unknown>, status?: Record<string, unknown>) => {
      badIds.push({ id: name, namespace, reason });
      objects.push({ plural: 'sessions', kind: 'Session', namespace, name, spec, status });
    };
    bad(
      'streamspace',
      'ss-broken-no-user-1',
      'missing spec.user',
      { template: 'firefox-browser', state: 'running', resources: { memory: '2Gi', cpu: '1000m' } },
      { phase: 'Failed' },
    );
    bad('streamspace', 'ss-bob-broken-no-template-1', 'missing spec.template', { user: 'bob', state: 'hibernated' }, { phase: 'Pending' });
    bad('streamspace', 'ss-carol-vscode-bad-memory-1', 'resources.memory', {
      user: 'carol',
      template: 'vscode',
      state: 'running',
      resources: { memory: 'lots', cpu: '1000m' },
      persistentHome: true,
    });
    bad(
      'workspaces',
      'ss-dan-no-such-template-1',
      'unknown template "no-such-template"',
      {
        user: 'dan',
        template: 'no-such-template',
        state: 'hibernated',
        resources: { memory: '2Gi', cpu: '1000m' },
      },
      { phase: 'Hibernated' },
    );
    // An older install's leftover with the same name as a live session in `streamspace`.
    const original = opts.sessions.find((s) => (s.namespace ?? 'streamspace') === 'streamspace');
    if (original) {
      duplicateIds.push(original.id);
      objects.push(sessionCr({ ...original, state: 'terminated', podName: null, tags: ['legacy-workspaces'] }, 'workspaces'));
    }
  }

  const createCr = async (o: CrToCreate) => {
    const body = {
      apiVersion: `${V1_GROUP}/${V1_VERSION}`,
      kind: o.kind,
      metadata: { name: o.name, namespace: o.namespace, ...(o.labels ? { labels: o.labels } : {}) },
      spec: o.spec,
    };
    const target = { group: V1_GROUP, version: V1_VERSION, namespace: o.namespace, plural: o.plural };
    let created: Record<string, unknown> | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        created = (await custom.createNamespacedCustomObject({ ...target, body })) as Record<string, unknown>;
        break;
      } catch (err) {
        if (codeOf(err) === 409) return; // already there (fixture re-applied)
        // A just-Established CRD can take a moment before its resource is served.
        if (codeOf(err) === 404 && attempt < 100) {
          await sleep(50);
          continue;
        }
        throw new Error(`creating ${o.kind} ${o.namespace}/${o.name}: ${(err as Error).message}`);
      }
    }
    if (o.status) {
      await custom.replaceNamespacedCustomObjectStatus({ ...target, name: o.name, body: { ...created, status: o.status } });
    }
  };
  // One first (absorbs the "not served yet" window), then the rest in parallel.
  await createCr(objects[0]);
  await pool(objects.slice(1), 16, createCr);

  // v1 and v2 Deployments (objects only: no kubelet), and the v1 Secret.
  for (const [ref, replicas] of Object.entries({ ...V1_DEPLOYMENTS, ...V2_DEPLOYMENTS })) {
    const [namespace, name] = ref.split('/');
    const version = ref in V1_DEPLOYMENTS ? 'v1.2.0' : '2.0.0';
    await ignoreConflict(apps.createNamespacedDeployment({ namespace, body: deploymentBody(name, replicas, version) }));
  }
  await ignoreConflict(
    core.createNamespacedSecret({
      namespace: 'streamspace',
      body: {
        metadata: { name: 'streamspace-secrets', labels: { 'app.kubernetes.io/part-of': 'streamspace' } },
        type: 'Opaque',
        stringData: {
          'jwt-secret': 'v1-fixture-jwt-secret-not-a-real-secret',
          'postgres-password': 'v1-fixture-password',
          'postgres-user': 'streamspace',
        },
      },
    }),
  );

  const countCrds = async () => {
    const count = async (plural: 'sessions' | 'templates') => {
      let n = 0;
      for (const namespace of V1_NAMESPACES) {
        const r = (await custom.listNamespacedCustomObject({ group: V1_GROUP, version: V1_VERSION, namespace, plural })) as { items?: unknown[] };
        n += r.items?.length ?? 0;
      }
      return n;
    };
    return { sessions: await count('sessions'), templates: await count('templates') };
  };

  const deploymentReplicas = async () => {
    const list = await apps.listDeploymentForAllNamespaces();
    const out: Record<string, number> = {};
    for (const d of list.items) out[`${d.metadata?.namespace}/${d.metadata?.name}`] = d.spec?.replicas ?? 1;
    return out;
  };

  return {
    badIds,
    duplicateIds,
    expected: {
      sessions: objects.filter((o) => o.plural === 'sessions').length,
      templates: objects.filter((o) => o.plural === 'templates').length,
    },
    deploymentReplicas,
    countCrds,
  };
}

// ---------------------------------------------------------------------------------------------
// Stand-in v1 API
// ---------------------------------------------------------------------------------------------

export interface FakeV1ApiRequest {
  method: string;
  /** Path without the query string. */
  path: string;
  /** Path with the query string, as received. */
  url: string;
  /** The Authorization header, if any. */
  auth?: string;
}

export interface FakeV1Api {
  /** http://127.0.0.1:<port> */
  url: string;
  requests: FakeV1ApiRequest[];
  /** "Down": open connections are reset and new ones closed at once (until resume()). */
  pause(): void;
  resume(): void;
  readonly paused: boolean;
  close(): Promise<void>;
}

/**
 * The v1 API as far as the migration and the v1 proxy see it: GET /health → {"status":"ok",
 * "version":"v1"}; GET /api/v1/sessions → [{"served_by":"v1"}]; anything else → {"served_by":"v1"}.
 */
export async function startFakeV1Api(): Promise<FakeV1Api> {
  const requests: FakeV1ApiRequest[] = [];
  const sockets = new Set<Socket>();
  let paused = false;
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    const path = url.split('?')[0];
    const auth = req.headers.authorization;
    requests.push({ method: req.method ?? 'GET', path, url, ...(auth ? { auth } : {}) });
    req.resume();
    req.on('end', () => {
      const body =
        req.method === 'GET' && path === '/health'
          ? { status: 'ok', version: 'v1' }
          : req.method === 'GET' && path === '/api/v1/sessions'
            ? [{ served_by: 'v1' }]
            : { served_by: 'v1' };
      const text = JSON.stringify(body);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'x-streamspace-version': 'v1' });
      res.end(text);
    });
  });
  server.on('connection', (socket: Socket) => {
    if (paused) {
      socket.destroy();
      return;
    }
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  let closed: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    pause() {
      paused = true;
      for (const s of sockets) s.destroy();
    },
    resume() {
      paused = false;
    },
    get paused() {
      return paused;
    },
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
        server.closeAllConnections();
      })),
  };
}
