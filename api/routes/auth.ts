import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { HttpError } from '../app';
import { verifyPassword, Role } from '../auth/tokens';

const LoginBody = Type.Object(
  { username: Type.String({ minLength: 1, maxLength: 255 }), password: Type.String({ minLength: 1, maxLength: 1024 }) },
  { additionalProperties: false },
);

export async function authRoutes(app: FastifyInstance): Promise<void> {
  app.post<{ Body: { username: string; password: string } }>(
    '/api/v1/auth/login',
    {
      schema: {
        tags: ['auth'],
        body: LoginBody,
        response: {
          200: Type.Object({
            token: Type.String(),
            expires_in: Type.Integer(),
            user: Type.Object({ id: Type.String(), username: Type.String(), role: Type.String() }),
          }),
        },
      },
    },
    async (req) => {
      const { pool, tokens, config } = app.deps;
      const r = await pool.query<{ id: string; username: string; role: Role; password_hash: string | null; active: boolean | null }>(
        'SELECT id::text AS id, username, role, password_hash, active FROM users WHERE username = $1',
        [req.body.username],
      );
      const user = r.rows[0];
      if (!user || !(await verifyPassword(req.body.password, user.password_hash))) throw new HttpError(401, 'invalid username or password');
      if (user.active === false) throw new HttpError(403, 'this account is disabled');
      const role: Role = user.role === 'admin' ? 'admin' : 'user';
      return { token: tokens.signUser(user.username, role), expires_in: config.jwtTtlSeconds, user: { id: user.id, username: user.username, role } };
    },
  );

  app.get('/api/v1/auth/me', { onRequest: app.authenticate, schema: { tags: ['auth'], security: [{ bearer: [] }] } }, async (req) => ({
    id: req.user!.uid,
    username: req.user!.sub,
    role: req.user!.role,
  }));
}
