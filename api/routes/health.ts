/** Liveness, readiness (database and Temporal reachable) and Prometheus metrics. */
import type { Connection } from '@temporalio/client';
import type { FastifyInstance } from 'fastify';

export async function healthRoutes(app: FastifyInstance): Promise<void> {
  app.get('/health', { schema: { hide: true } }, async () => ({ status: 'ok' }));

  app.get('/ready', { schema: { hide: true } }, async (_req, reply) => {
    const { pool, temporal } = app.deps;
    const checks: Record<string, string> = {};
    await Promise.all([
      pool.query('SELECT 1').then(
        () => (checks.database = 'ok'),
        (err: Error) => (checks.database = `unreachable: ${err.message}`),
      ),
      withTimeout((temporal.connection as Connection).healthService.check({}), 2000).then(
        () => (checks.temporal = 'ok'),
        (err: Error) => (checks.temporal = `unreachable: ${err.message}`),
      ),
    ]);
    const ready = Object.values(checks).every((v) => v === 'ok');
    return reply.status(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not ready', checks });
  });

  app.get('/metrics', { schema: { hide: true } }, async (_req, reply) => {
    const { pool, metrics, hub } = app.deps;
    try {
      const r = await pool.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM agents GROUP BY status');
      for (const s of ['online', 'offline', 'draining']) metrics.agentStatus.set(r.rows.find((x) => x.status === s)?.n ?? 0, { status: s });
    } catch {
      // metrics still render without the database
    }
    metrics.agentsConnectedHere.set(hub.localConnections().length);
    return reply.type('text/plain; version=0.0.4').send(metrics.render());
  });
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer within ${ms}ms`)), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e) => (clearTimeout(t), reject(e)),
    );
  });
}
