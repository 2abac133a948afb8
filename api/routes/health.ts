/** Liveness, readiness (database and Temporal reachable) and Prometheus metrics. */
import type { Connection } from '@temporalio/client';
import type { FastifyInstance } from 'fastify';
import { setAgentStatuses } from '../metrics';

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
      const r = await pool.query<{ agent_id: string; status: string | null }>('SELECT agent_id, status FROM agents');
      setAgentStatuses(metrics, r.rows);
    } catch {
      // metrics still render without the database
    }
    metrics.agentsConnectedHere.set(hub.localConnections().length);
    return reply.type(metrics.contentType).send(await metrics.render());
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
