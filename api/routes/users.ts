import { Type } from '@sinclair/typebox';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { HttpError } from '../errors';
import { revocationInstant } from '../auth/accounts';
import { hashPassword } from '../auth/tokens';
import { ensureUser } from '../../db/users';
import { checkLicense, inTransaction, LimitError } from '../../db/quota';
import { sessionWorkflowId, stopUpdate } from '../../workflows/session-api';
import { QuotaSchema, UserSchema, USERNAME_PATTERN } from '../schemas';

const CreateUser = Type.Object(
  {
    username: Type.String({ pattern: USERNAME_PATTERN }),
    password: Type.String({ minLength: 8, maxLength: 1024 }),
    email: Type.Optional(Type.String({ format: 'email', maxLength: 255 })),
    role: Type.Optional(Type.Union([Type.Literal('admin'), Type.Literal('user')])),
  },
  { additionalProperties: false },
);

/** Any existing username (v1's may not follow USERNAME_PATTERN). */
const UserParams = Type.Object({ username: Type.String({ minLength: 1, maxLength: 255 }) });
const ResetPassword = Type.Object({ password: Type.String({ minLength: 8, maxLength: 1024 }) }, { additionalProperties: false });
const PatchUser = Type.Object(
  { role: Type.Optional(Type.Union([Type.Literal('admin'), Type.Literal('user')])), active: Type.Optional(Type.Boolean()) },
  { additionalProperties: false, minProperties: 1 },
);

const QuotaBody = Type.Object(
  {
    max_sessions: Type.Integer({ minimum: 0, maximum: 10_000 }),
    max_cpu: Type.String({ pattern: '^([0-9]+m|[0-9]+(\\.[0-9]+)?)$', maxLength: 20, description: 'e.g. 4000m or 4' }),
    max_memory: Type.String({ pattern: '^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti)?$', maxLength: 20, description: 'e.g. 16Gi' }),
  },
  { additionalProperties: false },
);

interface UserRow {
  id: string;
  username: string;
  email: string | null;
  role: string;
  active: boolean;
}

const SELECT_USER = `SELECT id::text AS id, username, email, role, COALESCE(active, true) AS active FROM users WHERE username = $1`;
/** Session states that may still hold a container or pod (stop them before a user goes away). */
const LIVE_STATES = ['pending', 'running', 'hibernated', 'terminating'];

export async function userRoutes(app: FastifyInstance): Promise<void> {
  const admin = { onRequest: app.requireAdmin };
  const secured = { tags: ['users'], security: [{ bearer: [] }] };

  app.post<{ Body: { username: string; password: string; email?: string; role?: 'admin' | 'user' } }>(
    '/api/v1/users',
    { ...admin, schema: { ...secured, body: CreateUser } },
    async (req, reply) => {
      const { username, password, email, role = 'user' } = req.body;
      const { pool } = app.deps;
      if (await pool.query('SELECT 1 FROM users WHERE username = $1', [username]).then((r) => r.rowCount))
        throw new HttpError(409, `user "${username}" already exists`);
      if (email && (await pool.query('SELECT 1 FROM users WHERE email = $1', [email]).then((r) => r.rowCount)))
        throw new HttpError(409, `email "${email}" is already used by another user`);
      const passwordHash = await hashPassword(password);
      // The active licence's max_users (v1's licenses), counted and written in one transaction.
      const u = await inTransaction(pool, async (tx) => {
        await checkLicense(tx, 'users');
        return ensureUser(tx, { username, email, role, passwordHash });
      }).catch((err) => {
        throw err instanceof LimitError ? new HttpError(403, err.message) : err;
      });
      if (!u.created) throw new HttpError(409, `user "${username}" already exists`);
      return reply.status(201).send({ id: u.id, username, email: email ?? null, role });
    },
  );

  app.get('/api/v1/users', { ...admin, schema: { ...secured, response: { 200: Type.Array(UserSchema) } } }, async () => {
    const r = await app.deps.pool.query(
      `SELECT u.id::text AS id, u.username, u.email, u.role, COALESCE(u.active, true) AS active, u.created_at,
              CASE WHEN q.user_id IS NULL THEN NULL
                   ELSE json_build_object('max_sessions', COALESCE(q.max_sessions, 5), 'max_cpu', COALESCE(q.max_cpu, '4000m'), 'max_memory', COALESCE(q.max_memory, '16Gi'))
              END AS quota
         FROM users u LEFT JOIN user_quotas q ON q.user_id = u.id::text ORDER BY u.username`,
    );
    return r.rows;
  });

  // Per-user limits in v1's user_quotas (the row v1 created for each of its users, or a new one).
  app.put<{ Params: { username: string }; Body: { max_sessions: number; max_cpu: string; max_memory: string } }>(
    '/api/v1/users/:username/quota',
    { ...admin, schema: { ...secured, params: UserParams, body: QuotaBody, response: { 200: QuotaSchema } } },
    async (req) => {
      const u = await load(req.params.username);
      const { max_sessions, max_cpu, max_memory } = req.body;
      await app.deps.pool.query(
        `INSERT INTO user_quotas (user_id, max_sessions, max_cpu, max_memory, created_at, updated_at) VALUES ($1, $2, $3, $4, NOW(), NOW())
         ON CONFLICT (user_id) DO UPDATE SET max_sessions = EXCLUDED.max_sessions, max_cpu = EXCLUDED.max_cpu,
           max_memory = EXCLUDED.max_memory, updated_at = NOW()`,
        [u.id, max_sessions, max_cpu, max_memory],
      );
      app.deps.log.info('user quota set', { user: u.username, max_sessions, max_cpu, max_memory, by: req.user?.sub });
      return { max_sessions, max_cpu, max_memory };
    },
  );

  async function load(username: string): Promise<UserRow> {
    const u = (await app.deps.pool.query<UserRow>(SELECT_USER, [username])).rows[0];
    if (!u) throw new HttpError(404, `user "${username}" not found`);
    return u;
  }

  /** Refuses a change that would leave no active admin (nobody could manage accounts any more). */
  async function keepAnAdmin(u: UserRow, what: string): Promise<void> {
    if (u.role !== 'admin' || !u.active) return;
    const others = await app.deps.pool.query(`SELECT 1 FROM users WHERE role = 'admin' AND COALESCE(active, true) AND id::text <> $1 LIMIT 1`, [u.id]);
    if (!others.rowCount) throw new HttpError(409, `cannot ${what} "${u.username}": it is the last active admin`);
  }

  // Admin reset: a new password (scrypt); every token the user holds is revoked.
  app.post<{ Params: { username: string }; Body: { password: string } }>(
    '/api/v1/users/:username/password',
    { ...admin, schema: { ...secured, params: UserParams, body: ResetPassword } },
    async (req, reply) => {
      const u = await load(req.params.username);
      await app.deps.pool.query('UPDATE users SET password_hash = $2, tokens_valid_after = $3, updated_at = NOW() WHERE id::text = $1', [
        u.id,
        await hashPassword(req.body.password),
        revocationInstant(),
      ]);
      return reply.status(204).send();
    },
  );

  // Role and enabled/disabled. Both apply on the user's next request (the auth plugin reads them).
  app.patch<{ Params: { username: string }; Body: { role?: 'admin' | 'user'; active?: boolean } }>(
    '/api/v1/users/:username',
    { ...admin, schema: { ...secured, params: UserParams, body: PatchUser } },
    async (req) => {
      const u = await load(req.params.username);
      const { role, active } = req.body;
      if ((role && role !== 'admin') || active === false) await keepAnAdmin(u, role && role !== 'admin' ? 'demote' : 'disable');
      await app.deps.pool.query(
        `UPDATE users SET role = COALESCE($2, role), active = COALESCE($3, active),
                tokens_valid_after = CASE WHEN $3 = false THEN $4 ELSE tokens_valid_after END, updated_at = NOW()
          WHERE id::text = $1`,
        [u.id, role ?? null, active ?? null, revocationInstant()],
      );
      return load(u.username);
    },
  );

  // Delete: disable first (no new requests, no new sessions), stop the user's live sessions through
  // their workflows, then remove the row. Where v1's foreign keys forbid removing it, the account
  // stays disabled with no password instead (`removed: false` says so).
  app.delete<{ Params: { username: string } }>(
    '/api/v1/users/:username',
    { ...admin, schema: { ...secured, params: UserParams } },
    async (req: FastifyRequest<{ Params: { username: string } }>) => {
      const { pool, temporal } = app.deps;
      const u = await load(req.params.username);
      if (u.id === req.user!.uid) throw new HttpError(409, 'you cannot delete your own account');
      await keepAnAdmin(u, 'delete');
      await pool.query(`UPDATE users SET active = false, tokens_valid_after = $2, updated_at = NOW() WHERE id::text = $1`, [u.id, revocationInstant()]);

      const live = await pool.query<{ id: string; state: string }>(
        `SELECT id, state FROM sessions WHERE user_id = $1 AND workflow_id IS NOT NULL AND state = ANY($2::text[])`,
        [u.id, LIVE_STATES],
      );
      const results = await Promise.allSettled(
        live.rows.map(async (s) => {
          try {
            await temporal.workflow.getHandle(sessionWorkflowId(s.id)).executeUpdate(stopUpdate);
          } catch (err) {
            if (err instanceof WorkflowNotFoundError) return; // not managed any more: nothing runs
            throw new Error(`session ${s.id}: ${(err as Error).message}`);
          }
        }),
      );
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => (r.reason as Error).message);
      if (failed.length)
        throw new HttpError(502, `the account is disabled, but ${failed.length} session(s) did not stop (${failed.join('; ')}); retry the DELETE`);

      try {
        // One statement: the quota row goes with the user, or neither does.
        await pool.query('WITH q AS (DELETE FROM user_quotas WHERE user_id = $1) DELETE FROM users WHERE id::text = $1', [u.id]);
        return { username: u.username, removed: true, sessions_stopped: live.rowCount ?? 0 };
      } catch (err) {
        const e = err as Error & { code?: string; table?: string };
        if (e.code !== '23503') throw err;
        await pool.query('UPDATE users SET active = false, password_hash = NULL, updated_at = NOW() WHERE id::text = $1', [u.id]);
        return {
          username: u.username,
          removed: false,
          deactivated: true,
          reason: `rows in ${e.table ?? 'another table'} still reference this user; the account is disabled and has no password`,
          sessions_stopped: live.rowCount ?? 0,
        };
      }
    },
  );
}
