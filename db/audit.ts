/**
 * v1's `audit_log`, written the way v1's audit middleware (api/internal/middleware/auditlog.go)
 * writes it, so an install's history continues across the upgrade:
 *   user_id       users.id of the caller; '' when unauthenticated (v1), 'system' for automatic actions
 *   action        the HTTP method (v1), or a dotted name for automatic actions (session.idle_hibernate, …)
 *   resource_type the URL path (v1), or the resource kind for automatic actions (session, migration)
 *   resource_id   the resource's id where there is one (v1 left it '')
 *   changes       {method, path, status_code, duration_ms, request_body: null, response_body: null, error, metadata}
 *   timestamp     UTC, when the request started
 *   ip_address    the client address as the gateway trusts it (TRUST_PROXY); NULL for automatic actions
 * Request and response bodies are never stored (v1's default): `metadata.request` keeps only the
 * allow-listed fields of a request body (AUDITED_FIELDS), so a password, token or secret cannot
 * end up in the table.
 */
import type { Queryable } from './quota';

export interface AuditEntry {
  user_id: string;
  action: string;
  resource_type: string;
  resource_id: string;
  changes: AuditChanges;
  timestamp?: Date;
  ip_address: string | null;
}

export interface AuditChanges {
  method: string | null;
  path: string | null;
  status_code: number | null;
  duration_ms: number | null;
  request_body: null;
  response_body: null;
  error: string;
  metadata: Record<string, unknown> | null;
}

/** The actor of automatic actions (workflows, reconciliation, migrations). */
export const SYSTEM_ACTOR = 'system';

/** Request-body fields that may be recorded (nothing else is: no passwords, tokens, manifests). */
export const AUDITED_FIELDS = new Set([
  'user',
  'username',
  'email',
  'role',
  'active',
  'template',
  'platform',
  'state',
  'tags',
  'persistent_home',
  'action',
  'ids',
  'max_sessions',
  'max_cpu',
  'max_memory',
  'agent_id',
  'rotate',
  'expires_in',
  'name',
  'source',
  'cohort',
  'strategy',
  'dry_run',
  'reason',
  'database',
]);
/** Field names that are never recorded, even nested or allow-listed by mistake. */
const SECRET = /pass|token|secret|key|credential|auth|cookie|session_?id|otp|private/i;

/** The allow-listed part of a request body (scalars and short arrays of scalars only), or null. */
export function auditedBody(body: unknown): Record<string, unknown> | null {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return null;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body as Record<string, unknown>)) {
    if (!AUDITED_FIELDS.has(k) || SECRET.test(k)) continue;
    if (v === null || typeof v === 'boolean' || typeof v === 'number') out[k] = v;
    else if (typeof v === 'string') out[k] = v.length > 200 ? `${v.slice(0, 200)}…` : v;
    else if (Array.isArray(v) && v.every((x) => typeof x === 'string' || typeof x === 'number'))
      out[k] = v.length > 50 ? [...v.slice(0, 50), `… ${v.length - 50} more`] : v;
  }
  return Object.keys(out).length ? out : null;
}

export function changes(p: Partial<AuditChanges>): AuditChanges {
  return {
    method: p.method ?? null,
    path: p.path ?? null,
    status_code: p.status_code ?? null,
    duration_ms: p.duration_ms ?? null,
    request_body: null,
    response_body: null,
    error: p.error ?? '',
    metadata: p.metadata ?? null,
  };
}

const clip = (s: string | null | undefined, n: number) => (s == null ? s : s.length > n ? s.slice(0, n) : s);

/** Inserts entries in one statement (timestamps in UTC, as v1's UTC containers wrote them). */
export async function insertAudit(db: Queryable, entries: AuditEntry[]): Promise<void> {
  if (!entries.length) return;
  const values: string[] = [];
  const args: unknown[] = [];
  for (const e of entries) {
    const n = args.length;
    values.push(`($${n + 1}, $${n + 2}, $${n + 3}, $${n + 4}, $${n + 5}::jsonb, ($${n + 6}::timestamptz AT TIME ZONE 'UTC'), $${n + 7})`);
    args.push(
      clip(e.user_id, 255),
      clip(e.action, 100),
      clip(e.resource_type, 100),
      clip(e.resource_id, 255),
      JSON.stringify(e.changes),
      (e.timestamp ?? new Date()).toISOString(),
      clip(e.ip_address, 45),
    );
  }
  await db.query(
    `INSERT INTO audit_log (user_id, action, resource_type, resource_id, changes, timestamp, ip_address) VALUES ${values.join(', ')}`,
    args,
  );
}
