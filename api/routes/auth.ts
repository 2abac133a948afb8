import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { HttpError } from '../errors';
import { revocationInstant, verifyPasswordConstantTime, waitForTokenValidity } from '../auth/accounts';
import { LoginThrottle } from '../auth/login-throttle';
import { hashPassword, Role } from '../auth/tokens';

const LoginBody = Type.Object(
  { username: Type.String({ minLength: 1, maxLength: 255 }), password: Type.String({ minLength: 1, maxLength: 1024 }) },
  { additionalProperties: false },
);

export const NewPassword = Type.String({ minLength: 8, maxLength: 1024 });

const ChangePasswordBody = Type.Object(
  { current_password: Type.String({ minLength: 1, maxLength: 1024 }), new_password: NewPassword },
  { additionalProperties: false },
);

const TokenResponse = Type.Object({
  token: Type.String(),
  expires_in: Type.Integer(),
  user: Type.Object({ id: Type.String(), username: Type.String(), role: Type.String() }),
});

interface UserRow {
  id: string;
  username: string;
  role: Role;
  password_hash: string | null;
  active: boolean | null;
  tokens_valid_after: Date | null;
}

const SELECT_USER = 'SELECT id::text AS id, username, role, password_hash, active, tokens_valid_after FROM users WHERE username = $1';

export async function authRoutes(app: FastifyInstance): Promise<void> {
  const { config } = app.deps;
  const throttle = new LoginThrottle(app.deps.pool, {
    perUser: config.loginMaxFailuresPerUser,
    perAddress: config.loginMaxFailuresPerAddress,
    windowMs: config.loginWindowMs,
  });
  const sweep = setInterval(() => void throttle.sweep().catch(() => undefined), Math.max(60_000, config.loginWindowMs));
  sweep.unref();
  app.addHook('onClose', async () => clearInterval(sweep));

  /** Counts the attempt; 429 with retry-after when the username or the address is over its limit. */
  async function throttled(username: string, address: string, reply: { header(k: string, v: string): unknown }): Promise<void> {
    const v = await throttle.attempt(username, address);
    if (!v.allowed) {
      reply.header('retry-after', String(v.retryAfterSeconds));
      throw new HttpError(429, `${v.reason}: try again in ${v.retryAfterSeconds} s`);
    }
  }

  app.post<{ Body: { username: string; password: string } }>(
    '/api/v1/auth/login',
    { schema: { tags: ['auth'], body: LoginBody, response: { 200: TokenResponse } } },
    async (req, reply) => {
      const { pool, tokens } = app.deps;
      await throttled(req.body.username, req.ip, reply);
      const user = (await pool.query<UserRow>(SELECT_USER, [req.body.username])).rows[0];
      // Unknown users are checked against a dummy hash: the same work, the same answer.
      if (!(await verifyPasswordConstantTime(req.body.password, user?.password_hash))) throw new HttpError(401, 'invalid username or password');
      await throttle.succeeded(req.body.username, req.ip);
      if (user.active === false) throw new HttpError(403, 'this account is disabled');
      const role: Role = user.role === 'admin' ? 'admin' : 'user';
      await waitForTokenValidity(user.tokens_valid_after);
      return { token: tokens.signUser(user.username, role), expires_in: config.jwtTtlSeconds, user: { id: user.id, username: user.username, role } };
    },
  );

  app.get('/api/v1/auth/me', { onRequest: app.authenticate, schema: { tags: ['auth'], security: [{ bearer: [] }] } }, async (req) => ({
    id: req.user!.uid,
    username: req.user!.sub,
    role: req.user!.role,
  }));

  // Change one's own password: the current one is required (and throttled like a login). Every
  // token issued before is revoked; the answer carries a fresh one.
  app.post<{ Body: { current_password: string; new_password: string } }>(
    '/api/v1/auth/password',
    {
      onRequest: app.authenticate,
      schema: { tags: ['auth'], security: [{ bearer: [] }], body: ChangePasswordBody, response: { 200: TokenResponse } },
    },
    async (req, reply) => {
      const { pool, tokens } = app.deps;
      const me = req.user!;
      if (req.body.new_password === req.body.current_password) throw new HttpError(400, 'the new password must differ from the current one');
      await throttled(me.sub, req.ip, reply);
      const user = (await pool.query<UserRow>(SELECT_USER, [me.sub])).rows[0];
      if (!user || !(await verifyPasswordConstantTime(req.body.current_password, user.password_hash)))
        throw new HttpError(403, 'the current password is wrong');
      await throttle.succeeded(me.sub, req.ip);
      const validAfter = revocationInstant();
      // v2 writes scrypt; v1's bcrypt hashes are only ever replaced when the user sets a new password.
      await pool.query('UPDATE users SET password_hash = $2, tokens_valid_after = $3, updated_at = NOW() WHERE id::text = $1', [
        user.id,
        await hashPassword(req.body.new_password),
        validAfter,
      ]);
      await waitForTokenValidity(validAfter);
      return {
        token: tokens.signUser(user.username, me.role),
        expires_in: config.jwtTtlSeconds,
        user: { id: user.id, username: user.username, role: me.role },
      };
    },
  );
}
