/**
 * During a cut-over, every request of a user not yet moved to v2 is proxied to the v1 API (same
 * method, path, query, body and credentials), whatever the route, including routes v2 does not
 * have: each user sees exactly one version. Not proxied: login (`/api/v1/auth/*`, v2 issues the
 * token and knows every v1 user), the migration API, agents, health and metrics, and admins (they
 * run the migration and stay on v2; they see v1's data through v2's shared tables).
 *
 * The routing state is read from Redis (written by the migration workflow) and cached for 1 s;
 * the migration lets it settle before its catch-up import. Without Redis, or with no migration
 * under way, the hook returns at once (no authentication, no cost).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import Redis from 'ioredis';
import { Readable } from 'node:stream';
import { ROUTING_KEY, routeFor, RoutingState } from './state';

const CACHE_MS = 1000;
const PROXY_TIMEOUT_MS = 30_000;

/** Paths that stay on v2 for everyone. */
const V2_ONLY = [/^\/api\/v1\/auth(\/|$|\?)/, /^\/api\/v1\/migrations(\/|$|\?)/, /^\/api\/v1\/agents?(\/|$|\?)/];
/** User-facing paths (everything else: /health, /ready, /metrics, /openapi.json, static files). */
const USER_PATHS = [/^\/api\//, /^\/vnc-viewer(\/|$)/];

export function isRoutable(url: string): boolean {
  return USER_PATHS.some((r) => r.test(url)) && !V2_ONLY.some((r) => r.test(url));
}

export const routingPlugin = fp(async (app: FastifyInstance) => {
  const url = app.deps.config.redisUrl;
  if (!url) return; // no Redis: no migration routing; this gateway serves everyone
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, enableOfflineQueue: false });
  redis.on('error', () => undefined);
  await redis.connect().catch((err: Error) => app.deps.log.warn('routing: Redis unreachable; serving everyone on v2', { error: err.message }));
  let cached: { at: number; state: RoutingState | null } = { at: 0, state: null };
  const current = async (): Promise<RoutingState | null> => {
    if (Date.now() - cached.at < CACHE_MS) return cached.state;
    try {
      const raw = await redis.get(ROUTING_KEY);
      cached = { at: Date.now(), state: raw ? (JSON.parse(raw) as RoutingState) : null };
    } catch {
      cached = { at: Date.now(), state: cached.state };
    }
    return cached.state;
  };
  app.addHook('onClose', async () => redis.disconnect());

  // onRequest (global): runs for every route, and for paths v2 does not have (before the 404).
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    if (!isRoutable(req.url)) return;
    const state = await current();
    if (!state || state.mode === 'v2') return;
    if (!req.headers.authorization) return; // anonymous: the route answers (401) itself
    try {
      await app.authenticate(req);
    } catch {
      req.user = null;
      return; // a bad token: the route refuses it
    }
    const user = req.user;
    if (!user || user.role === 'admin' || routeFor(state, user.sub) !== 'v1') return;
    if (req.headers.upgrade) {
      return reply.status(421).send({ statusCode: 421, error: 'Misdirected Request', message: 'your account is still served by StreamSpace v1' });
    }
    const headers: Record<string, string> = {};
    for (const h of ['authorization', 'content-type', 'accept', 'user-agent', 'content-length']) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    headers['x-forwarded-for'] = req.ip;
    headers['x-streamspace-user'] = user.sub;
    const hasBody =
      req.method !== 'GET' && req.method !== 'HEAD' && (req.headers['content-length'] !== undefined || req.headers['transfer-encoding'] !== undefined);
    try {
      const res = await fetch(new URL(req.url, state.v1ApiUrl), {
        method: req.method,
        headers,
        ...(hasBody ? { body: Readable.toWeb(req.raw) as unknown as ReadableStream, duplex: 'half' } : {}),
        signal: AbortSignal.timeout(PROXY_TIMEOUT_MS),
      } as RequestInit);
      reply
        .header('x-streamspace-route', 'v1')
        .status(res.status)
        .type(res.headers.get('content-type') ?? 'application/json');
      return reply.send(Buffer.from(await res.arrayBuffer()));
    } catch (err) {
      return reply.status(502).send({ statusCode: 502, error: 'Bad Gateway', message: `v1 API unreachable: ${(err as Error).message}` });
    }
  });
});
