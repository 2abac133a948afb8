/**
 * GET /api/v1/events: the console's live stream (Server-Sent Events). `session` events carry a
 * session as the list shows it (users get their own, admins all), with the row's change number as
 * the event id; `agent` events (admins) an agent whose status changed; `resync` asks the browser
 * to refetch. A reconnecting browser sends Last-Event-ID and is sent what changed meanwhile, so
 * an API pod's restart loses nothing. The stream ends when the token expires.
 */
import type { FastifyInstance } from 'fastify';
import type { Subscriber } from '../events/live';

/** A comment line this often keeps proxies and load balancers from closing an idle stream. */
const KEEPALIVE_MS = 15_000;
const ACCOUNT_RECHECK_MS = 60_000;

export async function eventRoutes(app: FastifyInstance): Promise<void> {
  app.get(
    '/api/v1/events',
    {
      onRequest: app.authenticate,
      schema: {
        tags: ['events'],
        security: [{ bearer: [] }],
        description: 'text/event-stream: `session`, `agent` and `resync` events; send Last-Event-ID to catch up after a reconnect',
        headers: { type: 'object', properties: { 'last-event-id': { type: 'string', pattern: '^[0-9]{1,19}$' } } },
      },
    },
    async (req, reply) => {
      const live = app.deps.live;
      const claims = req.user!;
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        connection: 'keep-alive',
        'x-accel-buffering': 'no', // nginx: do not buffer the stream
        'x-content-type-options': 'nosniff',
      });
      let lastSeq = 0n;
      const write = (chunk: string) => {
        if (!res.writableEnded) res.write(chunk);
      };
      const sub: Subscriber = {
        uid: claims.uid,
        admin: claims.role === 'admin',
        session(view, seq) {
          // The id only moves forward: a command's change re-sends a row without a new number.
          let id = '';
          if (seq && BigInt(seq) > lastSeq) {
            lastSeq = BigInt(seq);
            id = `id: ${seq}\n`;
          }
          write(`event: session\n${id}data: ${JSON.stringify(view)}\n\n`);
        },
        agent(view) {
          write(`event: agent\ndata: ${JSON.stringify(view)}\n\n`);
        },
        resync() {
          write(`event: resync\ndata: {}\n\n`);
        },
      };
      // Retry quickly after a dropped connection (a restarted pod): the browser comes back in 1 s.
      write(`retry: 1000\n: connected\n\n`);
      const unsubscribe = live.subscribe(sub);
      const keepalive = setInterval(() => write(`: keepalive\n\n`), KEEPALIVE_MS);
      // The account is checked again every minute: a disabled user, a revoked token or a changed
      // role ends the stream (the browser reconnects, and is refused or gets its new view).
      const recheck = setInterval(() => {
        app
          .authenticate(req)
          .then(() => {
            if (req.user?.role !== claims.role) res.end();
          })
          .catch(() => res.end());
      }, ACCOUNT_RECHECK_MS);
      const exp = (claims as { exp?: unknown }).exp;
      const expiresIn = typeof exp === 'number' ? exp * 1000 - Date.now() : 8 * 3600_000;
      const expiry = setTimeout(() => res.end(), Math.max(0, Math.min(expiresIn, 2 ** 31 - 1)));
      const close = () => {
        clearInterval(keepalive);
        clearInterval(recheck);
        clearTimeout(expiry);
        unsubscribe();
      };
      res.on('close', close);
      const last = req.headers['last-event-id'];
      if (typeof last === 'string' && /^[0-9]{1,19}$/.test(last)) {
        await live.catchUp(sub, last).catch((err: Error) => {
          app.deps.log.warn('live events: catch-up failed; asking for a resync', { error: err.message });
          sub.resync();
        });
      }
    },
  );
}
