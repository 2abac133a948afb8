/**
 * During a cut-over, users not yet in a v2 cohort are proxied to the v1 API (same path, method,
 * body and credentials), so each user sees exactly one version. Admins always stay on v2.
 * The routing state is read from Redis (written by the migration workflow) and cached briefly.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import Redis from 'ioredis';
import { ROUTING_KEY, routeFor, RoutingState } from './state';

const CACHE_MS = 1000;

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

  app.addHook('preHandler', async (req: FastifyRequest, reply: FastifyReply) => {
    if (!req.user || req.user.role === 'admin' || !req.url.startsWith('/api/v1/sessions')) return;
    const state = await current();
    if (routeFor(state, req.user.sub) !== 'v1') return;
    const target = new URL(req.url, state!.v1ApiUrl);
    const headers: Record<string, string> = {};
    for (const h of ['authorization', 'content-type', 'accept', 'user-agent']) {
      const v = req.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    headers['x-forwarded-for'] = req.ip;
    headers['x-streamspace-user'] = req.user.sub;
    try {
      const res = await fetch(target, {
        method: req.method,
        headers,
        body: req.method === 'GET' || req.method === 'HEAD' || req.body === undefined ? undefined : JSON.stringify(req.body),
        signal: AbortSignal.timeout(30_000),
      });
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
