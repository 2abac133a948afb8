import { Type } from '@sinclair/typebox';
import { WorkflowNotFoundError } from '@temporalio/client';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { HttpError } from '../app';
import { revocationInstant } from '../auth/accounts';
import { hashPassword } from '../auth/tokens';
import { ensureUser } from '../../db/users';
import { sessionWorkflowId, stopUpdate } from '../../workflows/session-api';

export const USERNAME_PATTERN = '^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$';

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
      const u = await ensureUser(pool, { username, email, role, passwordHash: await hashPassword(password) });
      if (!u.created) throw new HttpError(409, `user "${username}" already exists`);
      return reply.status(201).send({ id: u.id, username, email: email ?? null, role });
    },
  );

  app.get('/api/v1/users', { ...admin, schema: secured }, async () => {
    const r = await app.deps.pool.query(
      'SELECT id::text AS id, username, email, role, COALESCE(active, true) AS active, created_at FROM users ORDER BY username',
    );
    return r.rows;
  });

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
        await pool.query('DELETE FROM users WHERE id::text = $1', [u.id]);
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
