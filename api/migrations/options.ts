/**
 * A migration run's request: its schema (the API's body and the operator CLI's config file), its
 * validation and the spec's defaults. Everything is checked before a run starts; bad input is a
 * MigrationInputError naming the field, and nothing starts.
 *
 * What is refused, and why:
 *  - runId: `^[a-z0-9][a-z0-9-]{0,62}$` (it names the run's folder under backupDir, its workflow
 *    ids and a `tar` operand: no path separators, no dots, no leading `-`).
 *  - URLs (v1.apiUrl, v2.readyUrl): http(s) only, no user:password. Private and loopback hosts are
 *    allowed on purpose (the v1 API and the v2 gateway are in-cluster services); when the gateway
 *    sets MIGRATION_ALLOWED_HOSTS (comma separated host names) only those hosts are accepted. The
 *    worker only reports the status code of what it fetches (never a body) and follows no redirect.
 *  - Databases: never a password in the request. `databaseUrl` without a password (plus an optional
 *    `databasePasswordRef`), or `databaseUrlRef`; the worker resolves the ref from its own
 *    environment or a mounted Secret (see DatabaseRef). Default: `env:V1_DATABASE_URL` (falling back
 *    to the worker's DATABASE_URL: v2 shares v1's database, as the spec says).
 *  - Paths (backupDir, kubeconfig): absolute, normalized (no `..`); inside MIGRATION_BACKUP_ROOT when
 *    the gateway sets it.
 *  - Durations (`500ms`, `30s`, `10m`, `1h`, `14d`) parsed here, within bounds; batch size 1..1000.
 */
import { Static, TSchema, Type } from '@sinclair/typebox';
import { Value } from '@sinclair/typebox/value';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import type { Cohort, DatabaseRef, MigrationOptions } from '../../workflows/migration-api';

export const RUN_ID_PATTERN = '^[a-z0-9][a-z0-9-]{0,62}$';
const DNS_LABEL = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$';
const DEPLOYMENT = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?/[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$';
const DURATION = '^[0-9]{1,9}(\\.[0-9]{1,3})?(ms|s|m|h|d)$';
const REF = '^(env:[A-Z][A-Z0-9_]{0,127}|file:/[^\\u0000-\\u001f]{1,1023})$';

const Str = (pattern: string, description: string, maxLength = 1024) => Type.String({ pattern, description, maxLength });
const Url = (description: string) => Type.String({ minLength: 1, maxLength: 2048, description: `${description} (http or https)` });
const AbsPath = (description: string) => Type.String({ minLength: 1, maxLength: 1024, description: `${description} (absolute path)` });
const Ref = (description: string) => Str(REF, `${description}: "env:NAME" or "file:/path" (resolved by the worker)`, 1030);
const Duration = (description: string) => Str(DURATION, `${description} (e.g. 30s, 10m, 1h, 14d)`, 20);
const Opt = <T extends TSchema>(t: T) => Type.Optional(t);
const DbFields = (which: string) => ({
  databaseUrl: Opt(Type.String({ minLength: 1, maxLength: 2048, description: `${which} database URL without a password (postgres://user@host:port/db)` })),
  databaseUrlRef: Opt(Ref(`${which} database URL by reference`)),
  databasePasswordRef: Opt(Ref(`password for databaseUrl by reference`)),
});

export const CohortSchema = Type.Object(
  {
    name: Str(DNS_LABEL, 'cohort name (lowercase letters, digits, -)', 63),
    users: Opt(Type.Array(Type.String({ minLength: 1, maxLength: 255, pattern: '^[^\\u0000-\\u001f\\s]+$' }), { maxItems: 10_000 })),
    percent: Opt(Type.Number({ minimum: 0, maximum: 100 })),
  },
  { additionalProperties: false },
);

export const MigrationRequestSchema = Type.Object(
  {
    runId: Opt(Str(RUN_ID_PATTERN, 'run id: lowercase letters, digits and -, up to 63, not starting with -', 63)),
    strategy: Opt(Type.Union([Type.Literal('blue-green'), Type.Literal('fresh-install'), Type.Literal('in-place')])),
    dryRun: Opt(Type.Boolean()),
    v1: Opt(
      Type.Object(
        {
          apiUrl: Opt(Url('v1 API base URL')),
          ...DbFields('v1'),
          kubeconfig: Opt(AbsPath('kubeconfig file on the worker')),
          namespaces: Opt(Type.Array(Str(DNS_LABEL, 'namespace', 63), { minItems: 1, maxItems: 20 })),
          deployments: Opt(Type.Array(Str(DEPLOYMENT, 'namespace/name', 317), { maxItems: 50 })),
        },
        { additionalProperties: false },
      ),
    ),
    v2: Opt(
      Type.Object(
        {
          readyUrl: Opt(Url('v2 gateway readiness URL')),
          ...DbFields('v2'),
          deployments: Opt(Type.Array(Str(DEPLOYMENT, 'namespace/name', 317), { maxItems: 50 })),
          platforms: Opt(Type.Array(Str(DNS_LABEL, 'platform', 63), { maxItems: 10 })),
        },
        { additionalProperties: false },
      ),
    ),
    backupDir: Opt(AbsPath('backup directory on the worker')),
    cohorts: Opt(Type.Array(CohortSchema, { maxItems: 20 })),
    approval: Opt(
      Type.Object(
        {
          mode: Opt(Type.Union([Type.Literal('manual'), Type.Literal('auto')])),
          soak: Opt(Duration('auto mode: soak per cohort')),
          maxSessionFailureRate: Opt(Type.Number({ minimum: 0, maximum: 1 })),
        },
        { additionalProperties: false },
      ),
    ),
    importBatchSize: Opt(Type.Integer({ minimum: 1, maximum: 1000 })),
    importPaceMs: Opt(Type.Integer({ minimum: 0, maximum: 600_000 })),
    agentWaitTimeout: Opt(Duration('how long to wait for online agents')),
    decommissionAfter: Opt(Duration('durable wait before v1 is decommissioned')),
  },
  { additionalProperties: false },
);

export type MigrationRequest = Static<typeof MigrationRequestSchema>;

/** A refused request: the field and the reason (never the value of a secret). */
export class MigrationInputError extends Error {
  constructor(
    readonly field: string,
    reason: string,
  ) {
    super(`invalid migration request: ${field}: ${reason}`);
  }
}

const UNIT: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DAY = UNIT.d;

/** Milliseconds of a duration string, or a MigrationInputError for the field. */
export function parseDuration(field: string, d: string, max: number): number {
  const m = new RegExp(DURATION).exec(d);
  if (!m) throw new MigrationInputError(field, `bad duration "${d.slice(0, 20)}" (use e.g. 500ms, 30s, 10m, 1h, 14d)`);
  const ms = Number(d.slice(0, -m[2].length)) * UNIT[m[2]];
  if (!(ms > 0)) throw new MigrationInputError(field, 'must be more than 0');
  if (ms > max) throw new MigrationInputError(field, `must be at most ${max / DAY}d`);
  return ms;
}

function checkHttpUrl(field: string, raw: string, env: NodeJS.ProcessEnv): string {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new MigrationInputError(field, 'not a URL');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new MigrationInputError(field, `only http and https URLs are allowed, not ${u.protocol.slice(0, 20)}`);
  if (u.username || u.password) throw new MigrationInputError(field, 'must not carry credentials');
  if (!u.hostname) throw new MigrationInputError(field, 'has no host');
  const allowed = (env.MIGRATION_ALLOWED_HOSTS ?? '')
    .split(',')
    .map((h) => h.trim().toLowerCase())
    .filter(Boolean);
  if (allowed.length && !allowed.includes(u.hostname.toLowerCase().replace(/^\[|\]$/g, '')))
    throw new MigrationInputError(field, `host ${u.hostname} is not in MIGRATION_ALLOWED_HOSTS`);
  return raw;
}

const ENV_REF_NAMES = /^((V1_|V2_)?DATABASE_(URL|PASSWORD)|MIGRATION_[A-Z0-9_]+)$/;

/** `env:NAME` (an allowed name) or `file:/abs/path` (normalized). The worker checks again when it resolves. */
export function checkRef(field: string, ref: string): string {
  if (ref.startsWith('env:')) {
    const name = ref.slice(4);
    if (!ENV_REF_NAMES.test(name))
      throw new MigrationInputError(field, `env refs may name DATABASE_URL, V1_/V2_DATABASE_URL, V1_/V2_DATABASE_PASSWORD or MIGRATION_*, not ${name}`);
    return ref;
  }
  if (ref.startsWith('file:')) {
    checkAbsPath(field, ref.slice(5));
    return ref;
  }
  throw new MigrationInputError(field, 'a reference is "env:NAME" or "file:/path"');
}

function checkAbsPath(field: string, p: string, root?: string): string {
  if (/[\u0000-\u001f]/.test(p)) throw new MigrationInputError(field, 'contains control characters');
  if (!path.posix.isAbsolute(p)) throw new MigrationInputError(field, 'must be an absolute path');
  if (p.split('/').includes('..')) throw new MigrationInputError(field, 'must not contain ".."');
  const norm = path.posix.normalize(p).replace(/(.)\/$/, '$1');
  if (root) {
    const r = path.posix.normalize(root).replace(/(.)\/$/, '$1');
    if (norm !== r && !norm.startsWith(r === '/' ? '/' : `${r}/`)) throw new MigrationInputError(field, `must be inside MIGRATION_BACKUP_ROOT (${r})`);
  }
  return norm;
}

function checkDatabase(
  field: 'v1' | 'v2',
  req: { databaseUrl?: string; databaseUrlRef?: string; databasePasswordRef?: string } | undefined,
): DatabaseRef | undefined {
  if (!req) return undefined;
  const { databaseUrl: url, databaseUrlRef: urlRef, databasePasswordRef: passwordRef } = req;
  if (url !== undefined && urlRef !== undefined) throw new MigrationInputError(`${field}.databaseUrlRef`, 'give databaseUrl or databaseUrlRef, not both');
  if (passwordRef !== undefined && url === undefined) throw new MigrationInputError(`${field}.databasePasswordRef`, 'goes with databaseUrl');
  if (url !== undefined) {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      // Not echoed: it may hold a secret.
      throw new MigrationInputError(`${field}.databaseUrl`, 'not a URL (postgres://user@host:port/db)');
    }
    if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') throw new MigrationInputError(`${field}.databaseUrl`, 'must be a postgres:// URL');
    if (u.password || [...u.searchParams.keys()].some((k) => /pass/i.test(k)))
      throw new MigrationInputError(
        `${field}.databaseUrl`,
        `must not contain a password: it would be kept in the workflow's history. Put it in the worker's environment or a Secret and pass ${field}.databasePasswordRef (e.g. "env:${field.toUpperCase()}_DATABASE_PASSWORD"), or the whole URL as ${field}.databaseUrlRef`,
      );
    if (!u.hostname) throw new MigrationInputError(`${field}.databaseUrl`, 'has no host');
  }
  if (urlRef !== undefined) checkRef(`${field}.databaseUrlRef`, urlRef);
  if (passwordRef !== undefined) checkRef(`${field}.databasePasswordRef`, passwordRef);
  if (url === undefined && urlRef === undefined) return undefined;
  return { ...(url !== undefined ? { url } : {}), ...(urlRef !== undefined ? { urlRef } : {}), ...(passwordRef !== undefined ? { passwordRef } : {}) };
}

function checkCohorts(cohorts: Cohort[]): Cohort[] {
  const seen = new Set<string>();
  cohorts.forEach((c, i) => {
    const f = `cohorts[${i}]`;
    if (c.name === 'full' || c.name.endsWith('-catchup')) throw new MigrationInputError(`${f}.name`, '"full" and names ending in "-catchup" are reserved');
    if (seen.has(c.name)) throw new MigrationInputError(`${f}.name`, `duplicate cohort "${c.name}"`);
    seen.add(c.name);
    if (!c.users?.length && !c.percent) throw new MigrationInputError(f, 'a cohort names users or a percent above 0');
  });
  return cohorts;
}

/** Validates the request against the schema (no coercion), naming the first bad field. */
export function validateMigrationRequest(req: unknown): MigrationRequest {
  if (req === null || typeof req !== 'object' || Array.isArray(req)) throw new MigrationInputError('body', 'must be a JSON object');
  const first = Value.Errors(MigrationRequestSchema, req).First();
  if (first) {
    const field =
      first.path
        .replace(/^\//, '')
        .replace(/\/(\d+)(?=\/|$)/g, '[$1]')
        .replace(/\//g, '.') || 'body';
    const schema = first.schema as { anyOf?: Array<{ const?: unknown }>; description?: string };
    const literals = schema.anyOf?.map((x) => x.const).filter((x) => x !== undefined);
    const reason = literals?.length ? `must be one of ${literals.join(', ')}` : `${first.message}${schema.description ? ` (${schema.description})` : ''}`;
    throw new MigrationInputError(field, reason);
  }
  return req as MigrationRequest;
}

/** The options a run starts with: the request validated, with the spec's defaults. Throws MigrationInputError. */
export function migrationOptions(input: unknown, env: NodeJS.ProcessEnv = process.env): MigrationOptions {
  const req = validateMigrationRequest(input);
  const v1Database = checkDatabase('v1', req.v1) ?? { urlRef: 'env:V1_DATABASE_URL' };
  const v2Database = checkDatabase('v2', req.v2);
  const backupRoot = env.MIGRATION_BACKUP_ROOT || undefined;
  const approval = {
    mode: req.approval?.mode ?? 'manual',
    soak: req.approval?.soak ?? '1h',
    maxSessionFailureRate: req.approval?.maxSessionFailureRate ?? 0.05,
  } as const;
  parseDuration('approval.soak', approval.soak, 30 * DAY);
  const agentWaitTimeout = req.agentWaitTimeout ?? '30m';
  parseDuration('agentWaitTimeout', agentWaitTimeout, 7 * DAY);
  const decommissionAfter = req.decommissionAfter ?? '14d';
  parseDuration('decommissionAfter', decommissionAfter, 365 * DAY);
  const kubeconfig = req.v1?.kubeconfig ?? env.KUBECONFIG;
  return {
    runId: req.runId ?? `mig-${new Date().toISOString().slice(0, 10)}-${randomUUID().slice(0, 8)}`,
    strategy: req.strategy ?? 'blue-green',
    dryRun: req.dryRun ?? false,
    v1: {
      apiUrl: checkHttpUrl('v1.apiUrl', req.v1?.apiUrl ?? env.V1_API_URL ?? 'http://streamspace-api.streamspace.svc:8080', env),
      database: v1Database,
      ...(kubeconfig ? { kubeconfig: checkAbsPath('v1.kubeconfig', kubeconfig) } : {}),
      namespaces: req.v1?.namespaces ?? ['streamspace', 'workspaces'],
      deployments: req.v1?.deployments ?? ['streamspace/streamspace-api', 'streamspace/streamspace-controller'],
    },
    v2: {
      readyUrl: checkHttpUrl('v2.readyUrl', req.v2?.readyUrl ?? env.V2_READY_URL ?? `http://127.0.0.1:${env.PORT ?? 8080}/ready`, env),
      ...(v2Database ? { database: v2Database } : {}),
      deployments: req.v2?.deployments ?? [
        'streamspace-v2/streamspace-control-plane',
        'streamspace-v2/streamspace-worker',
        'streamspace/streamspace-k8s-agent',
      ],
      platforms: req.v2?.platforms ?? ['kubernetes'],
    },
    backupDir: checkAbsPath('backupDir', req.backupDir ?? env.MIGRATION_BACKUP_DIR ?? '/var/lib/streamspace/migration-backups', backupRoot),
    cohorts: checkCohorts(
      req.cohorts ?? [
        { name: 'pilot', percent: 5 },
        { name: 'beta', percent: 25 },
      ],
    ),
    approval,
    importBatchSize: req.importBatchSize ?? 50,
    importPaceMs: req.importPaceMs ?? 0,
    agentWaitTimeout,
    decommissionAfter,
  };
}
