import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { HttpError } from '../app';
import { hashPassword } from '../auth/tokens';
import { ensureUser } from '../../db/users';

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

export async function userRoutes(app: FastifyInstance): Promise<void> {
  app.post<{ Body: { username: string; password: string; email?: string; role?: 'admin' | 'user' } }>(
    '/api/v1/users',
    { onRequest: app.requireAdmin, schema: { tags: ['users'], security: [{ bearer: [] }], body: CreateUser } },
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

  app.get('/api/v1/users', { onRequest: app.requireAdmin, schema: { tags: ['users'], security: [{ bearer: [] }] } }, async () => {
    const r = await app.deps.pool.query(
      'SELECT id::text AS id, username, email, role, COALESCE(active, true) AS active, created_at FROM users ORDER BY username',
    );
    return r.rows;
  });
}
