/** Authenticates user requests (Bearer JWT) and exposes guards for routes. */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { HttpError } from '../errors';
import { tokenRevoked } from './accounts';
import { bearer, RequestUser, Role, TokenError } from './tokens';
import { createUserLookup } from './user-lookup';

declare module 'fastify' {
  interface FastifyRequest {
    user: RequestUser | null;
  }
  interface FastifyInstance {
    authenticate: (req: FastifyRequest) => Promise<void>;
    requireAdmin: (req: FastifyRequest) => Promise<void>;
  }
}

export const authPlugin = fp(async (app: FastifyInstance) => {
  app.decorateRequest('user', null);
  // Concurrent requests' checks share a query (api/auth/user-lookup.ts); nothing is cached.
  const users = createUserLookup(app.deps.readPool);
  app.decorate('authenticate', async (req: FastifyRequest) => {
    const token = bearer(req.headers.authorization);
    if (!token) throw new HttpError(401, 'missing bearer token (Authorization: Bearer <token from /api/v1/auth/login>)');
    let claims;
    try {
      claims = app.deps.tokens.verifyUser(token);
    } catch (err) {
      throw new HttpError(401, err instanceof TokenError ? err.message : 'invalid token');
    }
    // The token says who; the users table says what they may do now: a removed or disabled user
    // is refused, and a role change applies on the next request.
    // A token issued before the password was last changed or reset (or the account disabled) is revoked.
    const u = await users.load(claims.sub);
    if (!u || u.active === false) throw new HttpError(401, 'this account no longer exists or is disabled');
    if (tokenRevoked((claims as unknown as { iat?: unknown }).iat, u.tokens_valid_after))
      throw new HttpError(401, 'this token was revoked (password changed or reset): sign in again');
    const role: Role = u.role === 'admin' ? 'admin' : 'user';
    req.user = { ...claims, role, uid: u.uid };
  });
  app.decorate('requireAdmin', async (req: FastifyRequest) => {
    await app.authenticate(req);
    if (req.user?.role !== 'admin') throw new HttpError(403, 'admin role required');
  });
});
