/**
 * Quotas and licence limits, read from the tables v1 keeps (`user_quotas`, `licenses`), checked
 * under a PostgreSQL advisory lock taken in the caller's transaction: lock, count, then write in
 * the same transaction, so concurrent creates and wakes of one user (or, for the licence, of
 * everyone) never exceed a limit.
 *
 *  - user_quotas: one row per user (v1 made one for each of its users). No row: no per-user
 *    limit. A NULL column: no limit on that resource. max_sessions counts the user's sessions that
 *    run or are starting (pending, running, and hibernated ones whose wake is in flight);
 *    max_cpu / max_memory cap the sum of their resources (the session's own cpu/memory columns,
 *    else its template's defaultResources; a session without any counts 0).
 *  - licenses: the newest row with status 'active' (v1's rule: `WHERE status = 'active' ORDER BY
 *    activated_at DESC LIMIT 1`). No table or no active row: nothing is limited. An active row that
 *    has expired refuses new users and sessions (v1's LicenseEnforcement answered 403 "License
 *    expired"). max_users counts active users; max_sessions counts sessions that are pending,
 *    running or hibernated (v1 counted running + hibernated). NULL: unlimited.
 */
import { manifestSpec } from '../activities/templates';

export interface Queryable {
  query<R extends Record<string, unknown> = Record<string, any>>(sql: string, args?: unknown[]): Promise<{ rows: R[]; rowCount: number | null }>;
}

/** A limit would be exceeded; the message names it. */
export class LimitError extends Error {
  constructor(
    message: string,
    readonly kind: 'quota' | 'license',
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------------------

/** Kubernetes-style CPU quantity ('1000m', '2', '0.5') in millicores; null when absent or invalid. */
export function cpuMillis(q: unknown): number | null {
  if (typeof q !== 'string' && typeof q !== 'number') return null;
  const m = /^\s*(\d+(?:\.\d+)?)(m)?\s*$/.exec(String(q));
  if (!m) return null;
  return Math.round(m[2] ? parseFloat(m[1]) : parseFloat(m[1]) * 1000);
}

const MEM_UNITS: Record<string, number> = { '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40 };
/** Memory quantity ('16Gi', '512Mi', '1G', bytes) in bytes; null when absent or invalid. */
export function memoryBytes(q: unknown): number | null {
  if (typeof q !== 'string' && typeof q !== 'number') return null;
  const m = /^\s*(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$/.exec(String(q));
  if (!m) return null;
  return Math.round(parseFloat(m[1]) * MEM_UNITS[m[2] ?? '']);
}

export const formatCpu = (millis: number): string => `${millis}m`;
export function formatMemory(bytes: number): string {
  for (const [u, f] of [
    ['Ti', 2 ** 40],
    ['Gi', 2 ** 30],
    ['Mi', 2 ** 20],
  ] as const) {
    if (bytes >= f && bytes % (f / 1024) === 0) return `${+(bytes / f).toFixed(3)}${u}`;
  }
  return `${bytes}`;
}

export interface Resources {
  cpu: number;
  memory: number;
}

/** A session's resources: its own cpu/memory columns (v1 filled them; v2 copies the template's at create), else its template's. */
export function sessionResources(row: { cpu?: string | null; memory?: string | null; manifest?: unknown }): Resources {
  const res = row.manifest ? manifestSpec(row.manifest).defaultResources : undefined;
  return {
    cpu: cpuMillis(row.cpu) ?? cpuMillis(res?.cpu) ?? 0,
    memory: memoryBytes(row.memory) ?? memoryBytes(res?.memory) ?? 0,
  };
}

/** A template's defaultResources as the strings stored on a new session (null when it has none). */
export async function templateResources(db: Queryable, template: string): Promise<{ cpu: string | null; memory: string | null }> {
  const r = await db.query<{ manifest: unknown }>('SELECT manifest FROM template_catalog WHERE name = $1', [template]);
  const res = r.rows[0]?.manifest ? manifestSpec(r.rows[0].manifest).defaultResources : undefined;
  return {
    cpu: typeof res?.cpu === 'string' && cpuMillis(res.cpu) !== null ? res.cpu : null,
    memory: typeof res?.memory === 'string' && memoryBytes(res.memory) !== null ? res.memory : null,
  };
}

// ---------------------------------------------------------------------------------------------
// Per-user quotas
// ---------------------------------------------------------------------------------------------

/** What the statement that takes a user's quota lock reads with it. */
export interface QuotaLock {
  /** The user's user_quotas row; null when they have none (no per-user limit). */
  limits: UserLimits | null;
  /** Whether v1's licenses table exists (a database v2 created has none): checkLicense need not look again. */
  licensesTable: boolean;
}

/**
 * Serialises quota checks of one user (until the transaction ends). The same statement reads the
 * user's limits and whether a licenses table exists, so an admission costs one round trip where it
 * took three. The limits are read as of the statement's start, which may be before the lock was
 * granted: an admin's change of the quota that commits meanwhile applies from the next admission,
 * as it would had it committed a moment later. What other admissions change (the sessions and
 * reservations counted against the limits) is read after the lock, by checkUserQuota.
 * Lock order: this lock before the licence's (checkLicense), in every transaction that takes both.
 */
export async function lockUserQuota(tx: Queryable, userId: string): Promise<QuotaLock> {
  const r = await tx.query<{ licenses_table: boolean; limited: boolean; max_sessions: number | null; max_cpu: string | null; max_memory: string | null }>(
    `SELECT to_regclass('licenses') IS NOT NULL AS licenses_table, q.user_id IS NOT NULL AS limited, q.max_sessions, q.max_cpu, q.max_memory
       FROM pg_advisory_xact_lock(hashtext('streamspace.quota'), hashtext($1)) LEFT JOIN user_quotas q ON q.user_id = $1`,
    [userId],
  );
  const row = r.rows[0];
  return {
    licensesTable: row.licenses_table,
    limits: row.limited ? { max_sessions: row.max_sessions, max_cpu: row.max_cpu, max_memory: row.max_memory } : null,
  };
}

export interface UserLimits {
  max_sessions: number | null;
  max_cpu: string | null;
  max_memory: string | null;
}

/** Sessions of the user that hold (or are about to hold) resources, other than `except`. */
export async function userUsage(db: Queryable, userId: string, except: string | null): Promise<{ sessions: number } & Resources> {
  // One row per kind of session (cpu, memory, template), each template's manifest read once.
  const r = await db.query<{ n: number; cpu: string | null; memory: string | null; manifest: unknown }>(
    `SELECT g.n, g.cpu, g.memory, t.manifest
       FROM (SELECT s.cpu, s.memory, s.template_name, count(*)::int AS n
               FROM sessions s
              WHERE s.user_id = $1 AND s.id IS DISTINCT FROM $2
                AND (s.state IN ('pending', 'running')
                     OR EXISTS (SELECT 1 FROM quota_reservations q WHERE q.session_id = s.id AND q.expires_at > NOW()))
              GROUP BY s.cpu, s.memory, s.template_name) g
       LEFT JOIN template_catalog t ON t.name = g.template_name`,
    [userId, except],
  );
  const out = { sessions: 0, cpu: 0, memory: 0 };
  for (const row of r.rows) {
    const res = sessionResources(row);
    out.sessions += row.n;
    out.cpu += res.cpu * row.n;
    out.memory += res.memory * row.n;
  }
  return out;
}

/**
 * Throws a LimitError if one more session with `need` would exceed the user's quota. Call inside a
 * transaction after lockUserQuota, with the limits it read; `except` is the session being admitted
 * (a wake) if it exists.
 */
export async function checkUserQuota(tx: Queryable, userId: string, limits: UserLimits | null, need: Resources, except: string | null): Promise<void> {
  if (!limits) return;
  const used = await userUsage(tx, userId, except);
  if (limits.max_sessions !== null && used.sessions + 1 > limits.max_sessions)
    throw new LimitError(`quota exceeded: ${used.sessions} of ${limits.max_sessions} sessions in use (user_quotas.max_sessions)`, 'quota');
  const maxCpu = cpuMillis(limits.max_cpu);
  if (maxCpu !== null && used.cpu + need.cpu > maxCpu)
    throw new LimitError(
      `quota exceeded: cpu ${formatCpu(used.cpu + need.cpu)} would exceed ${formatCpu(maxCpu)} (user_quotas.max_cpu; ${formatCpu(used.cpu)} in use, this session needs ${formatCpu(need.cpu)})`,
      'quota',
    );
  const maxMem = memoryBytes(limits.max_memory);
  if (maxMem !== null && used.memory + need.memory > maxMem)
    throw new LimitError(
      `quota exceeded: memory ${formatMemory(used.memory + need.memory)} would exceed ${formatMemory(maxMem)} (user_quotas.max_memory; ${formatMemory(used.memory)} in use, this session needs ${formatMemory(need.memory)})`,
      'quota',
    );
}

/** How long a wake's reservation holds at most (a dead worker's is forgotten after it). */
export const RESERVATION_TTL_MS = 15 * 60_000;

/** A session holds at most one reservation: reserving again renews it. */
const RESERVATION_RENEWED = `ON CONFLICT (session_id) DO UPDATE SET user_id = EXCLUDED.user_id, created_at = NOW(), expires_at = EXCLUDED.expires_at`;

export async function reserve(tx: Queryable, sessionId: string, userId: string, ttlMs = RESERVATION_TTL_MS): Promise<void> {
  await tx.query(
    `INSERT INTO quota_reservations (session_id, user_id, expires_at) VALUES ($1, $2, NOW() + ($3::int * INTERVAL '1 millisecond'))
     ${RESERVATION_RENEWED}`,
    [sessionId, userId, ttlMs],
  );
}

/**
 * A wake's reservation for an owner without quota (no user_quotas row), in one statement: there
 * is nothing to count, so neither the owner's lock nor a transaction is needed. The row is still
 * written, so the waking session counts should a limit be set while it wakes. `limited`: the
 * owner has a quota row; reserve under the lock, after counting (lockUserQuota, checkUserQuota).
 */
export async function reserveUnlessLimited(db: Queryable, sessionId: string, ttlMs = RESERVATION_TTL_MS): Promise<'reserved' | 'limited' | 'no-session'> {
  const r = await db.query<{ found: boolean; reserved: boolean }>(
    `WITH s AS (SELECT user_id FROM sessions WHERE id = $1),
          ins AS (INSERT INTO quota_reservations (session_id, user_id, expires_at)
                  SELECT $1, s.user_id, NOW() + ($2::int * INTERVAL '1 millisecond') FROM s
                   WHERE NOT EXISTS (SELECT 1 FROM user_quotas q WHERE q.user_id = s.user_id)
                  ${RESERVATION_RENEWED}
                  RETURNING 1)
     SELECT EXISTS (SELECT 1 FROM s) AS found, EXISTS (SELECT 1 FROM ins) AS reserved`,
    [sessionId, ttlMs],
  );
  const row = r.rows[0];
  return !row.found ? 'no-session' : row.reserved ? 'reserved' : 'limited';
}

export async function releaseReservation(db: Queryable, sessionId: string): Promise<void> {
  await db.query('DELETE FROM quota_reservations WHERE session_id = $1', [sessionId]);
}

// ---------------------------------------------------------------------------------------------
// Licence (v1's `licenses`)
// ---------------------------------------------------------------------------------------------

export type License = {
  id: number;
  license_key: string;
  tier: string;
  max_users: number | null;
  max_sessions: number | null;
  max_nodes: number | null;
  issued_at: string | null;
  expires_at: string | null;
  activated_at: string | null;
  status: string;
  expired: boolean;
};

const ts = (col: string) => `to_char(${col}, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

/**
 * The active licence (v1's rule), or null when there is no licenses table or no active row.
 * `licensesTable`: whether the table exists, when the caller knows (lockUserQuota read it).
 */
export async function activeLicense(db: Queryable, licensesTable?: boolean): Promise<License | null> {
  const present = licensesTable ?? (await db.query<{ present: boolean }>(`SELECT to_regclass('licenses') IS NOT NULL AS present`)).rows[0]?.present;
  if (!present) return null;
  const r = await db.query<License>(
    `SELECT id, license_key, tier, max_users, max_sessions, max_nodes, ${ts('issued_at')} AS issued_at, ${ts('expires_at')} AS expires_at,
            ${ts('activated_at')} AS activated_at, status, (expires_at IS NOT NULL AND expires_at <= LOCALTIMESTAMP) AS expired
       FROM licenses WHERE status = 'active' ORDER BY activated_at DESC NULLS LAST, id DESC LIMIT 1`,
  );
  return r.rows[0] ?? null;
}

/** Sessions the licence counts (v1: running + hibernated; v2 also counts those starting). */
export async function licensedSessions(db: Queryable): Promise<number> {
  const r = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM sessions WHERE state IN ('pending', 'running', 'hibernated')`);
  return r.rows[0].n;
}
export async function licensedUsers(db: Queryable): Promise<number> {
  const r = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM users WHERE COALESCE(active, true)`);
  return r.rows[0].n;
}

/**
 * Throws a LimitError if one more session (or user) would exceed the active licence. Inside a
 * transaction: takes the licence's lock for that resource first, only when a limit applies, and
 * then returns true (the caller holds that lock, which every create waits for, until it commits).
 * `licensesTable` as for activeLicense.
 */
export async function checkLicense(tx: Queryable, what: 'sessions' | 'users', licensesTable?: boolean): Promise<boolean> {
  const lic = await activeLicense(tx, licensesTable);
  if (!lic) return false;
  if (lic.expired)
    throw new LimitError(
      `license expired on ${(lic.expires_at ?? '').slice(0, 10)} (${lic.tier} tier): no new ${what} until it is renewed or another license is activated`,
      'license',
    );
  const max = what === 'sessions' ? lic.max_sessions : lic.max_users;
  if (max === null || max === undefined) return false;
  await tx.query(`SELECT pg_advisory_xact_lock(hashtext('streamspace.license'), hashtext($1))`, [what]);
  const used = what === 'sessions' ? await licensedSessions(tx) : await licensedUsers(tx);
  if (used + 1 > max)
    throw new LimitError(
      `license limit: ${max} ${what} (${lic.tier} tier); ${used} in use — ${what === 'sessions' ? 'stop or remove a session' : 'disable or remove a user'}, or activate a license with more`,
      'license',
    );
  return true;
}

/** Runs fn in a transaction on a pooled client. */
export async function inTransaction<T>(pool: { connect(): Promise<Queryable & { release(): void }> }, fn: (tx: Queryable) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    const out = await fn(client);
    await client.query('COMMIT');
    return out;
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}
