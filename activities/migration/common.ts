/**
 * What every migration phase's activities share: database and Redis access, heartbeats that keep
 * long activities alive (and deliver cancellation), child processes killed on cancellation, the
 * table checksums and the schema snapshot a rollback compares against.
 */
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import Redis from 'ioredis';
import { Client } from 'pg';
import type { AdoptionDeps } from '../session-adoption';
import { redactSecrets } from '../../workflows/migration-api';
import type { DatabaseRef, MigrationOptions } from '../../workflows/migration-api';

export interface MigrationActivityDeps {
  redisUrl: string | undefined;
  /** Set by the worker: imported sessions get their session workflow (managed v2 sessions). */
  adoption?: AdoptionDeps;
  /**
   * The Deployment running this worker ("namespace/name"): a rollback never scales it down (it
   * would kill the rollback). Default: $STREAMSPACE_WORKER_DEPLOYMENT, else any ".../streamspace-worker".
   */
  workerDeployment?: string;
}

export interface TableState {
  count: number;
  checksum: string;
}

/** The schema as it was at backup time: what a rollback brings back (and what "v1's columns" are). */
export interface SchemaSnapshot {
  /** table → columns in order, with their default expression and nullability. */
  tables: Record<string, Array<{ name: string; default: string | null; notNull: boolean }>>;
  views: string[];
  /** "table.trigger" */
  triggers: string[];
  /** "name(args)" */
  functions: string[];
  indexes: string[];
}

export async function withDb<T>(url: string, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: url, application_name: 'streamspace-migration' });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end().catch(() => undefined);
  }
}

export async function withRedis<T>(redisUrl: string | undefined, fn: (r: Redis) => Promise<T>): Promise<T> {
  if (!redisUrl) throw ApplicationFailure.nonRetryable('the cut-over needs REDIS_URL (routing shared by all API pods)', 'ConfigError');
  const r = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
  await r.connect();
  try {
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

const RUN_ID = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** The run's folder: always a direct child of backupDir (the run id cannot climb out of it). */
export function runDir(o: MigrationOptions): string {
  if (!RUN_ID.test(o.runId)) throw ApplicationFailure.nonRetryable(`run id must match ${RUN_ID.source}`, 'ConfigError');
  const base = path.resolve(o.backupDir);
  const dir = path.resolve(base, o.runId);
  if (path.relative(base, dir) !== o.runId || path.dirname(dir) !== base)
    throw ApplicationFailure.nonRetryable('the run directory would leave backupDir', 'ConfigError');
  return dir;
}

/** A file directly in backupDir (the decommission archive), checked the same way. */
export function inBackupDir(o: MigrationOptions, name: string): string {
  const base = path.resolve(o.backupDir);
  const file = path.resolve(base, name);
  if (path.dirname(file) !== base || name.startsWith('-')) throw ApplicationFailure.nonRetryable(`${name} would leave backupDir`, 'ConfigError');
  return file;
}

// --- Secrets: resolved here, in the worker, from its environment or a mounted Secret; never input. ---

const ENV_REF_NAMES = /^((V1_|V2_)?DATABASE_(URL|PASSWORD)|MIGRATION_[A-Z0-9_]+)$/;

/** `env:NAME` or `file:/path` (inside $MIGRATION_SECRETS_DIR): the secret's value. */
export async function resolveRef(ref: string, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (ref.startsWith('env:')) {
    const name = ref.slice(4);
    if (!ENV_REF_NAMES.test(name)) throw ApplicationFailure.nonRetryable(`env ref ${name} is not one a migration may read`, 'ConfigError');
    const value = env[name] || (name === 'V1_DATABASE_URL' ? env.DATABASE_URL : undefined);
    if (!value) throw ApplicationFailure.nonRetryable(`the worker's environment has no ${name}`, 'ConfigError');
    return value;
  }
  if (ref.startsWith('file:')) {
    const root = env.MIGRATION_SECRETS_DIR;
    if (!root) throw ApplicationFailure.nonRetryable('file: refs need MIGRATION_SECRETS_DIR on the worker', 'ConfigError');
    let file: string;
    let dir: string;
    try {
      dir = realpathSync(root);
      file = realpathSync(ref.slice(5));
    } catch {
      throw ApplicationFailure.nonRetryable(`secret file ${ref.slice(5)} not found`, 'ConfigError');
    }
    if (!file.startsWith(dir + path.sep)) throw ApplicationFailure.nonRetryable(`secret file ${ref.slice(5)} is outside MIGRATION_SECRETS_DIR`, 'ConfigError');
    return (await readFile(file, 'utf8')).replace(/\r?\n$/, '');
  }
  throw ApplicationFailure.nonRetryable('a secret ref is "env:NAME" or "file:/path"', 'ConfigError');
}

/** A database's connection string with its password (for node-postgres in this process only). */
export async function databaseUrl(ref: DatabaseRef): Promise<string> {
  const raw = ref.urlRef ? await resolveRef(ref.urlRef) : ref.url;
  if (!raw) throw ApplicationFailure.nonRetryable('no database given', 'ConfigError');
  if (!ref.passwordRef) return raw;
  const u = new URL(raw);
  u.password = encodeURIComponent(await resolveRef(ref.passwordRef));
  return u.toString();
}

export const v1DatabaseUrl = (o: MigrationOptions): Promise<string> => databaseUrl(o.v1.database);
/** v2's database (agents register there): v1's unless given. */
export const v2DatabaseUrl = (o: MigrationOptions): Promise<string> => databaseUrl(o.v2.database ?? o.v1.database);

/**
 * How a pg_* child process reaches a database: `--dbname=<url without password>` on its command
 * line (visible in ps, in errors) and the password in PGPASSWORD.
 */
export function pgTarget(url: string): { arg: string; env: NodeJS.ProcessEnv } {
  const u = new URL(url);
  const password = u.password ? decodeURIComponent(u.password) : undefined;
  u.password = '';
  return { arg: `--dbname=${u.toString()}`, env: password ? { PGPASSWORD: password } : {} };
}

/** Redacts an error (message, stack, causes) in place, keeping its class (a cancellation stays one). */
export function redactError<E>(err: E, depth = 0): E {
  if (err && typeof err === 'object' && depth < 10) {
    const e = err as unknown as { message?: unknown; stack?: unknown; cause?: unknown };
    try {
      if (typeof e.message === 'string') e.message = redactSecrets(e.message);
      if (typeof e.stack === 'string') e.stack = redactSecrets(e.stack);
    } catch {
      /* read-only: left as it is */
    }
    if (e.cause) redactError(e.cause, depth + 1);
  }
  return err;
}

/** Wraps a phase's activities: whatever they throw is redacted before Temporal records it. */
export function redacting<T extends Record<string, (...args: any[]) => Promise<any>>>(activities: T): T {
  const out: Record<string, (...args: any[]) => Promise<any>> = {};
  for (const [name, fn] of Object.entries(activities)) {
    out[name] = async (...args: any[]) => {
      try {
        return await fn(...args);
      } catch (err) {
        throw redactError(err);
      }
    };
  }
  return out as T;
}
export const quoteIdent = (s: string): string => `"${s.replace(/"/g, '""')}"`;

function heartbeatOnly(detail?: unknown): void {
  try {
    Context.current().heartbeat(detail);
  } catch {
    /* not in an activity (tests, CLI) */
  }
}

/**
 * Inside an activity: heartbeat now, and stop here (throw) if the activity has been cancelled
 * (the cancellation arrives with a heartbeat's answer). Every proxy waits for a cancelled
 * activity to finish (WAIT_CANCELLATION_COMPLETED), so a loop that only heartbeats and never
 * looks at its cancellation would keep a rollback waiting forever. Outside an activity: no-op.
 */
export function beat(detail?: unknown): void {
  heartbeatOnly(detail);
  throwIfCancelled();
}

/** Throws the activity's cancellation if it has been cancelled (outside an activity: nothing). */
export function throwIfCancelled(): void {
  const signal = activitySignal();
  if (signal?.aborted) throw signal.reason ?? new CancelledFailure('activity cancelled');
}

/** Sleeps ms, heartbeating first; a cancellation ends the sleep at once (and throws). */
export async function pause(ms: number, detail?: unknown): Promise<void> {
  beat(detail);
  const signal = activitySignal();
  await new Promise<void>((resolve) => {
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
  throwIfCancelled();
}

function activitySignal(): AbortSignal | undefined {
  try {
    return Context.current().cancellationSignal;
  } catch {
    return undefined;
  }
}

/** Runs fn while heartbeating every few seconds, so a long step stays under heartbeatTimeout. */
export async function heartbeating<T>(detail: unknown, fn: () => Promise<T>, everyMs = 5000): Promise<T> {
  beat(detail);
  // The timer only heartbeats (a throw there would be uncaught); cancellation reaches fn itself.
  const t = setInterval(() => heartbeatOnly(detail), everyMs);
  try {
    return await fn();
  } finally {
    clearInterval(t);
  }
}

/**
 * Runs a child process (pg_dump, pg_restore, tar), heartbeating while it runs; the activity's
 * cancellation kills it (SIGTERM, then SIGKILL) and the activity fails as cancelled.
 */
export function runProcess(cmd: string, args: string[], label = cmd, env: NodeJS.ProcessEnv = {}): Promise<{ stdout: string; stderr: string }> {
  const signal = activitySignal();
  return heartbeating({ step: label }, () => {
    return new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(new Error(`${label}: cancelled before it started`));
      const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => {
        if (stdout.length < 64 << 20) stdout += d.toString();
      });
      child.stderr.on('data', (d: Buffer) => {
        if (stderr.length < 1 << 20) stderr += d.toString();
      });
      let killTimer: NodeJS.Timeout | undefined;
      const onAbort = () => {
        child.kill('SIGTERM');
        killTimer = setTimeout(() => child.kill('SIGKILL'), 5000);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      child.once('error', (err) => {
        signal?.removeEventListener('abort', onAbort);
        reject(new Error(redactSecrets(`${label}: ${err.message}`)));
      });
      child.once('close', (code, sig) => {
        signal?.removeEventListener('abort', onAbort);
        if (killTimer) clearTimeout(killTimer);
        if (signal?.aborted) return reject(signal.reason ?? new Error(`${label}: cancelled`));
        if (code === 0) resolve({ stdout, stderr });
        else reject(new Error(redactSecrets(`${label} failed (${sig ?? `exit ${code}`}): ${stderr.trim().slice(-2000)}`)));
      });
    });
  });
}

export async function sha256(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Base tables of the current schema. */
export async function listTables(c: Client): Promise<string[]> {
  const r = await c.query(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY 1`,
  );
  return r.rows.map((x) => x.relname as string);
}

/**
 * Count and checksum per table, over the given columns (default: all). The checksum is
 * order-independent (sorted row hashes), so two databases with the same rows agree.
 */
export async function tableStates(c: Client, tables: string[], columns?: Record<string, string[]>): Promise<Record<string, TableState>> {
  const out: Record<string, TableState> = {};
  for (const t of tables) {
    if (!(await c.query('SELECT to_regclass($1) AS r', [quoteIdent(t)])).rows[0].r) continue;
    const cols = columns?.[t];
    const row = cols ? `jsonb_build_array(${cols.map((col) => `x.${quoteIdent(col)}`).join(', ')})::text` : 'x::text';
    const r = await c.query(
      `SELECT count(*)::int AS n, COALESCE(md5(string_agg(h, '' ORDER BY h)), '') AS sum FROM (SELECT md5(${row}) AS h FROM ${quoteIdent(t)} x) y`,
    );
    out[t] = { count: r.rows[0].n, checksum: r.rows[0].sum };
    beat({ checksum: t });
  }
  return out;
}

export async function schemaSnapshot(c: Client): Promise<SchemaSnapshot> {
  const cols = await c.query(
    `SELECT c.relname AS t, a.attname AS col, pg_get_expr(d.adbin, d.adrelid) AS def, a.attnotnull AS nn
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
       LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY c.relname, a.attnum`,
  );
  const tables: SchemaSnapshot['tables'] = {};
  for (const r of cols.rows) (tables[r.t] ??= []).push({ name: r.col, default: r.def, notNull: r.nn });
  const views = await c.query(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind IN ('v', 'm') ORDER BY 1`,
  );
  const triggers = await c.query(
    `SELECT c.relname || '.' || t.tgname AS n FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = current_schema() AND NOT t.tgisinternal ORDER BY 1`,
  );
  const functions = await c.query(
    `SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS n FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
      LEFT JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
      WHERE n.nspname = current_schema() AND d.objid IS NULL ORDER BY 1`,
  );
  const indexes = await c.query(
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'i' ORDER BY 1`,
  );
  return {
    tables,
    views: views.rows.map((r) => r.relname),
    triggers: triggers.rows.map((r) => r.n),
    functions: functions.rows.map((r) => r.n),
    indexes: indexes.rows.map((r) => r.relname),
  };
}

/** Differences between two snapshots ("" when equal), for verification messages. */
export function snapshotDiff(want: SchemaSnapshot, have: SchemaSnapshot): string {
  const out: string[] = [];
  const set = (label: string, a: string[], b: string[]) => {
    const extra = b.filter((x) => !a.includes(x));
    const missing = a.filter((x) => !b.includes(x));
    if (extra.length) out.push(`extra ${label}: ${extra.join(', ')}`);
    if (missing.length) out.push(`missing ${label}: ${missing.join(', ')}`);
  };
  set('tables', Object.keys(want.tables), Object.keys(have.tables));
  for (const [t, cols] of Object.entries(want.tables)) {
    if (!have.tables[t]) continue;
    if (JSON.stringify(cols) !== JSON.stringify(have.tables[t])) out.push(`columns of ${t} differ`);
  }
  set('views', want.views, have.views);
  set('triggers', want.triggers, have.triggers);
  set('functions', want.functions, have.functions);
  set('indexes', want.indexes, have.indexes);
  return out.join('; ');
}

/** md5 over the v1 columns of a row (alias `x`): tells whether a row changed since we wrote it. */
export function fingerprintSql(v1Columns: string[], alias = 'x'): string {
  return `md5(jsonb_build_array(${v1Columns.map((c) => `${alias}.${quoteIdent(c)}`).join(', ')})::text)`;
}
