import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { HttpError } from '../app';
import { hashPassword } from '../auth/tokens';

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
      const r = await app.deps.pool.query(
        `INSERT INTO users (username, email, role, password_hash) VALUES ($1, $2, $3, $4)
         ON CONFLICT (username) DO NOTHING RETURNING username`,
        [username, email ?? null, role, await hashPassword(password)],
      );
      if (!r.rowCount) throw new HttpError(409, `user "${username}" already exists`);
      return reply.status(201).send({ username, email: email ?? null, role });
    },
  );

  app.get('/api/v1/users', { onRequest: app.requireAdmin, schema: { tags: ['users'], security: [{ bearer: [] }] } }, async () => {
    const r = await app.deps.pool.query('SELECT username, email, role, created_at FROM users ORDER BY username');
    return r.rows;
  });
}
