/**
 * SQL migration runner.
 *
 * Migrations are plain SQL files in `<repo>/migrations` (or $MIGRATIONS_DIR), applied in filename
 * order. Each file starts with a `-- version: <version>` header; the version is what gets recorded
 * in `schema_migrations(version, applied_at)`. The runner:
 *   - holds a session-level `pg_advisory_lock` on one dedicated connection for the whole run, so
 *     concurrent runners (several API pods starting at once) serialise instead of racing;
 *   - creates `schema_migrations` if missing (under the lock: concurrent CREATE TABLE IF NOT EXISTS
 *     can otherwise fail with a duplicate-key error on pg_type);
 *   - applies each not-yet-recorded file in its own transaction
 *     (BEGIN; file; INSERT version ON CONFLICT DO NOTHING; COMMIT) and rolls back on error, so a
 *     failed file leaves neither partial changes nor a version row behind;
 *   - is safe to re-run: recorded versions are skipped.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Client } from 'pg';

/** Fixed advisory-lock key for schema migrations ("SSMIGRAT" folded into a bigint). */
export const MIGRATION_LOCK_KEY = '5353494d49475241';
const LOCK_KEY_SQL = `x'${MIGRATION_LOCK_KEY}'::bigint`;

const VERSION_HEADER = /^\s*--\s*version:\s*(\S+)\s*$/im;
const MAX_VERSION_LENGTH = 50;

export interface MigrationFile {
  /** File name, e.g. `001_v2.0-agents.sql`. */
  file: string;
  /** Absolute path. */
  path: string;
  /** Version from the `-- version:` header, e.g. `v2.0.0-agents`. */
  version: string;
}

export interface MigrateOptions {
  log?: (msg: string) => void;
  /** Folder holding the .sql files; defaults to $MIGRATIONS_DIR or `<repo>/migrations`. */
  dir?: string;
}

export interface MigrateResult {
  /** Versions applied by this run, in order. */
  applied: string[];
  /** Versions already recorded, left alone. */
  skipped: string[];
}

export interface MigrationStatus extends MigrationFile {
  applied: boolean;
  appliedAt: Date | null;
}

/**
 * The repository root: the nearest directory above `from` holding a package.json. Works both from
 * the sources (`<repo>/db`) and from the compiled output (`<repo>/dist/db`).
 */
function findRepoRoot(from: string): string | undefined {
  let dir = path.resolve(from);
  for (;;) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) return undefined;
    dir = parent;
  }
}

/** Where migrations are read from: $MIGRATIONS_DIR, else `<repo>/migrations`. */
export function migrationsDir(env: NodeJS.ProcessEnv = process.env): string {
  const override = env.MIGRATIONS_DIR;
  if (override) return path.resolve(override);
  // Walk up from this file; a package.json directly in dist/ (none today) would not hold the SQL,
  // so keep walking until a root that actually has migrations/.
  let from = __dirname;
  for (;;) {
    const root = findRepoRoot(from);
    if (!root) break;
    const candidate = path.join(root, 'migrations');
    if (fs.existsSync(candidate)) return candidate;
    const parent = path.dirname(root);
    if (parent === root) break;
    from = parent;
  }
  throw new Error(`migrations folder not found above ${__dirname}; set MIGRATIONS_DIR`);
}

/** Reads the version from a migration's `-- version: <version>` header line. */
export function parseVersion(sql: string, file: string): string {
  const m = VERSION_HEADER.exec(sql);
  if (!m) throw new Error(`migration ${file}: missing "-- version: <version>" header`);
  const version = m[1];
  if (version.length > MAX_VERSION_LENGTH) {
    throw new Error(`migration ${file}: version "${version}" is longer than ${MAX_VERSION_LENGTH} characters`);
  }
  return version;
}

/** The migration files in application (filename) order, each with its version. */
export function listMigrations(dir: string = migrationsDir()): MigrationFile[] {
  if (!fs.existsSync(dir)) throw new Error(`migrations folder ${dir} does not exist`);
  const files = fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.sql'))
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const seen = new Map<string, string>();
  return files.map((file) => {
    const full = path.join(dir, file);
    const version = parseVersion(fs.readFileSync(full, 'utf8'), file);
    const other = seen.get(version);
    if (other) throw new Error(`migrations ${other} and ${file} both declare version ${version}`);
    seen.set(version, file);
    return { file, path: full, version };
  });
}

/** 1-based line of a character position (PostgreSQL's error `position` is 1-based). */
function lineOf(sql: string, position: number): number {
  return sql.slice(0, Math.max(0, position - 1)).split('\n').length;
}

function describePgError(err: unknown, sql: string): string {
  if (!(err instanceof Error)) return String(err);
  const e = err as Error & { position?: string; code?: string; detail?: string; where?: string };
  const parts = [e.message];
  if (e.position) parts.push(`at line ${lineOf(sql, Number(e.position))}`);
  if (e.code) parts.push(`(SQLSTATE ${e.code})`);
  let text = parts.join(' ');
  if (e.detail) text += `; ${e.detail}`;
  if (e.where) text += `; ${e.where}`;
  return text;
}

/**
 * Before a file runs: locks the existing tables it names, each table before the tables it
 * references (sessions before agents), in ACCESS EXCLUSIVE mode, the mode its ALTERs take anyway.
 * v1 keeps writing while a blue-green migration applies these files to its database, and a v1
 * INSERT into sessions holds sessions, then locks agents (sessions.agent_id, added by 001). A file
 * that ALTERs agents before sessions (002) took the two in the other order: a lock cycle,
 * and PostgreSQL aborted one of them, sometimes v1's write. Taken here in the writers' order, the
 * file waits for v1's open statement on sessions holding nothing v1 needs, and no cycle can form.
 * Over-locking a table a file only mentions (in a comment or a function body) costs a short wait.
 */
async function lockNamedTables(client: Client, sql: string): Promise<void> {
  const text = sql.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/--[^\n]*/g, ' ');
  const words = new Set(text.toLowerCase().match(/[a-z_][a-z0-9_$]*/g) ?? []);
  const tables = (
    await client.query<{ name: string }>(
      `SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')`,
    )
  ).rows
    .map((r) => r.name)
    .filter((t) => words.has(t.toLowerCase()));
  if (!tables.length) return;
  const edges = (
    await client.query<{ child: string; parent: string }>(
      `SELECT ch.relname AS child, pa.relname AS parent FROM pg_constraint k
         JOIN pg_class ch ON ch.oid = k.conrelid JOIN pg_class pa ON pa.oid = k.confrelid
         JOIN pg_namespace n ON n.oid = ch.relnamespace
        WHERE k.contype = 'f' AND n.nspname = current_schema() AND k.conrelid <> k.confrelid`,
    )
  ).rows.filter((e) => tables.includes(e.child) && tables.includes(e.parent));
  // Children first: a table is locked once every named table referencing it is (a cycle: by name).
  const order: string[] = [];
  const pending = new Set([...tables].sort());
  while (pending.size) {
    const ready = [...pending].filter((t) => !edges.some((e) => e.parent === t && pending.has(e.child)));
    const next = ready[0] ?? [...pending][0];
    pending.delete(next);
    order.push(next);
  }
  for (const t of order) await client.query(`LOCK TABLE "${t.replace(/"/g, '""')}" IN ACCESS EXCLUSIVE MODE`);
}

async function ensureTrackingTable(client: Client): Promise<void> {
  await client.query(
    `CREATE TABLE IF NOT EXISTS schema_migrations (
       version VARCHAR(50) PRIMARY KEY,
       applied_at TIMESTAMP DEFAULT NOW()
     )`,
  );
  // A schema_migrations left by another tool (e.g. golang-migrate's bigint version) would make
  // every INSERT below fail obscurely; say so up front.
  const { rows } = await client.query<{ data_type: string }>(
    `SELECT format_type(a.atttypid, a.atttypmod) AS data_type
       FROM pg_attribute a
      WHERE a.attrelid = to_regclass('schema_migrations') AND a.attname = 'version'
        AND a.attnum > 0 AND NOT a.attisdropped`,
  );
  const type = rows[0]?.data_type ?? 'missing';
  if (!/^(character varying|text|character)/.test(type)) {
    throw new Error(
      `schema_migrations exists but its version column is ${type}, not text; ` +
        'it was created by another tool — rename it before running StreamSpace migrations',
    );
  }
}

async function appliedVersions(client: Client): Promise<Map<string, Date | null>> {
  const { rows } = await client.query<{ version: string; applied_at: Date | null }>('SELECT version, applied_at FROM schema_migrations');
  return new Map(rows.map((r) => [r.version, r.applied_at]));
}

async function withLockedClient<T>(databaseUrl: string, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: databaseUrl, application_name: 'streamspace-migrate' });
  // Without a listener an 'error' on an idle client (server restart) would crash the process.
  client.on('error', () => undefined);
  await client.connect();
  let locked = false;
  try {
    await client.query(`SELECT pg_advisory_lock(${LOCK_KEY_SQL})`);
    locked = true;
    return await fn(client);
  } finally {
    if (locked) {
      // If the connection is broken the server already released the session lock.
      await client.query(`SELECT pg_advisory_unlock(${LOCK_KEY_SQL})`).catch(() => undefined);
    }
    await client.end().catch(() => undefined);
  }
}

/**
 * Applies every migration not yet recorded in schema_migrations, in filename order, each in its
 * own transaction, under an advisory lock. Throws (naming the file) on the first failure; files
 * applied before it stay applied.
 */
export async function migrate(databaseUrl: string, opts: MigrateOptions = {}): Promise<MigrateResult> {
  const log = opts.log ?? (() => undefined);
  const migrations = listMigrations(opts.dir ?? migrationsDir());
  return withLockedClient(databaseUrl, async (client) => {
    await ensureTrackingTable(client);
    const done = await appliedVersions(client);
    const result: MigrateResult = { applied: [], skipped: [] };
    for (const m of migrations) {
      if (done.has(m.version)) {
        result.skipped.push(m.version);
        continue;
      }
      const sql = fs.readFileSync(m.path, 'utf8');
      const started = Date.now();
      log(`applying ${m.file} (${m.version})`);
      try {
        await client.query('BEGIN');
        await lockNamedTables(client, sql);
        await client.query(sql);
        await client.query('INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT (version) DO NOTHING', [m.version]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw new Error(`migration ${m.file} (${m.version}) failed and was rolled back: ${describePgError(err, sql)}`, {
          cause: err,
        });
      }
      result.applied.push(m.version);
      log(`applied ${m.file} (${m.version}) in ${Date.now() - started} ms`);
    }
    return result;
  });
}

/**
 * Every known migration, whether and when it was applied, plus versions recorded in
 * the database that no file declares (e.g. applied by a newer release).
 */
export async function migrationStatus(
  databaseUrl: string,
  opts: { dir?: string } = {},
): Promise<{ migrations: MigrationStatus[]; unknown: { version: string; appliedAt: Date | null }[] }> {
  const migrations = listMigrations(opts.dir ?? migrationsDir());
  const client = new Client({ connectionString: databaseUrl, application_name: 'streamspace-migrate' });
  client.on('error', () => undefined);
  await client.connect();
  try {
    const exists = await client.query<{ t: string | null }>(`SELECT to_regclass('schema_migrations')::text AS t`);
    const done = exists.rows[0].t ? await appliedVersions(client) : new Map<string, Date | null>();
    const known = new Set(migrations.map((m) => m.version));
    return {
      migrations: migrations.map((m) => ({
        ...m,
        applied: done.has(m.version),
        appliedAt: done.get(m.version) ?? null,
      })),
      unknown: [...done.entries()].filter(([v]) => !known.has(v)).map(([version, appliedAt]) => ({ version, appliedAt })),
    };
  } finally {
    await client.end().catch(() => undefined);
  }
}
