/** Authenticates user requests (Bearer JWT) and exposes guards for routes. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { HttpError } from '../app';
import { bearer, TokenError, UserClaims } from './tokens';

declare module 'fastify' {
  interface FastifyRequest {
    user: UserClaims | null;
  }
  interface FastifyInstance {
    authenticate: (req: FastifyRequest) => Promise<void>;
    requireAdmin: (req: FastifyRequest) => Promise<void>;
  }
}

export const authPlugin = fp(async (app: FastifyInstance) => {
  app.decorateRequest('user', null);
  app.decorate('authenticate', async (req: FastifyRequest) => {
    const token = bearer(req.headers.authorization);
    if (!token) throw new HttpError(401, 'missing bearer token (Authorization: Bearer <token from /api/v1/auth/login>)');
    try {
      req.user = app.deps.tokens.verifyUser(token);
    } catch (err) {
      throw new HttpError(401, err instanceof TokenError ? err.message : 'invalid token');
    }
  });
  app.decorate('requireAdmin', async (req: FastifyRequest) => {
    await app.authenticate(req);
    if (req.user?.role !== 'admin') throw new HttpError(403, 'admin role required');
  });
});
