import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';

interface AgentRow {
  agent_id: string;
  status: string;
  platform: string;
  region: string | null;
  cluster_id: string | null;
  capacity: { max_sessions?: number } | null;
  active_sessions: number | null;
  current_sessions: number;
  last_heartbeat: Date | null;
  metadata: Record<string, unknown> | null;
}

export async function agentRoutes(app: FastifyInstance): Promise<void> {
  const admin = { onRequest: app.requireAdmin };
  const secured = { security: [{ bearer: [] }], tags: ['agents'] };

  // Fields as in the spec's sample: agent_id, status, platform, region, capacity, last_heartbeat.
  app.get('/api/v1/agents', { ...admin, schema: secured }, async () => {
    const r = await app.deps.pool.query<AgentRow>(
      `SELECT a.agent_id, a.status, a.platform, a.region, a.cluster_id, a.capacity, a.active_sessions, a.last_heartbeat, a.metadata,
              (SELECT count(*)::int FROM sessions s WHERE s.agent_id = a.id AND s.state IN ('pending', 'running', 'terminating')) AS current_sessions
         FROM agents a ORDER BY a.platform, a.agent_id`,
    );
    return r.rows.map((a) => ({
      agent_id: a.agent_id,
      status: a.status,
      platform: a.platform,
      region: a.region,
      cluster_id: a.cluster_id,
      capacity: { ...(a.capacity ?? {}), max_sessions: a.capacity?.max_sessions ?? 0, current_sessions: a.current_sessions },
      last_heartbeat: a.last_heartbeat,
      metadata: a.metadata ?? {},
    }));
  });

  app.post<{ Body: { agent_id: string } }>(
    '/api/v1/agents/tokens',
    {
      ...admin,
      schema: {
        ...secured,
        body: Type.Object({ agent_id: Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$', maxLength: 255 }) }, { additionalProperties: false }),
      },
    },
    async (req, reply) => reply.status(201).send({ agent_id: req.body.agent_id, token: app.deps.tokens.signAgent(req.body.agent_id) }),
  );
}
