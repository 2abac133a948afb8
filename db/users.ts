/**
 * Users as StreamSpace v1 keeps them, shared by the gateway and the importers: `users.id` is the
 * identity (a uuid string in v1, 'admin' for v1's seeded admin) and `sessions.user_id` references
 * it; the username is what people type and what tokens carry. v1.0.0 requires a unique, non-null
 * email, so v2 supplies one when none is given.
 */

interface Queryable {
  query<R extends Record<string, unknown> = Record<string, unknown>>(sql: string, args?: unknown[]): Promise<{ rows: R[]; rowCount: number | null }>;
}

export interface NewUser {
  username: string;
  role?: 'admin' | 'user';
  email?: string | null;
  passwordHash?: string | null;
}

/** The placeholder email of a user created without one (unique per username; `.invalid` never routes). */
export const placeholderEmail = (username: string): string => `${username}@users.streamspace.invalid`;

/** Creates the user if absent; returns `{id, created}`. An existing user is left exactly as it is. */
export async function ensureUser(db: Queryable, u: NewUser): Promise<{ id: string; created: boolean }> {
  const ins = await db.query<{ id: string }>(
    `INSERT INTO users (username, email, role, password_hash) VALUES ($1, $2, $3, $4)
     ON CONFLICT DO NOTHING RETURNING id::text AS id`,
    [u.username, u.email ?? placeholderEmail(u.username), u.role ?? 'user', u.passwordHash ?? null],
  );
  if (ins.rows[0]) return { id: ins.rows[0].id, created: true };
  const found = await userIdOf(db, u.username);
  if (!found) throw new Error(`cannot create user "${u.username}": its email is already taken by another user`);
  return { id: found, created: false };
}

export async function userIdOf(db: Queryable, username: string): Promise<string | null> {
  const r = await db.query<{ id: string }>('SELECT id::text AS id FROM users WHERE username = $1', [username]);
  return r.rows[0]?.id ?? null;
}

/**
 * The owner of a v1 session: v1 wrote `users.id` into sessions.user_id and usually the same value
 * into the Session CRD's spec.user; older installs (and hand-made CRDs) carry the username. An id
 * match wins over a username match.
 */
export async function resolveV1Owner(db: Queryable, ref: string): Promise<{ id: string; username: string } | null> {
  const r = await db.query<{ id: string; username: string }>(
    `SELECT id::text AS id, username FROM users WHERE id::text = $1 OR username = $1
      ORDER BY (id::text = $1) DESC LIMIT 1`,
    [ref],
  );
  return r.rows[0] ?? null;
}
