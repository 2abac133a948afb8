import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { parseDuration } from '../../config/env';
import { HttpError } from '../errors';
import { AGENT_ID_PATTERN, AgentTokenConflict, AgentTokenRecord, listAgentTokens, mintAgentToken, revokeAgentToken } from '../auth/agent-credentials';
import { TokenError } from '../auth/tokens';
import { loadAgents } from '../agents/view';
import { AgentSchema } from '../schemas';

const MAX_TOKEN_LIFETIME_S = 3650 * 86_400;

export async function agentRoutes(app: FastifyInstance): Promise<void> {
  const admin = { onRequest: app.requireAdmin };
  const secured = { security: [{ bearer: [] }], tags: ['agents'] };

  // Fields as in the spec's sample: agent_id, status, platform, region, capacity, last_heartbeat.
  app.get('/api/v1/agents', { ...admin, schema: { ...secured, response: { 200: Type.Array(AgentSchema) } } }, async () =>
    loadAgents(app.deps.pool, app.deps.config.heartbeatTimeoutMs),
  );

  // Agent credentials (agent_tokens): one live token per agent id; rotate to replace it.
  const AgentId = Type.String({ pattern: AGENT_ID_PATTERN, maxLength: 255 });
  const TokenOptions = {
    /** Lifetime, e.g. "30d", "12h"; none: until revoked. */
    expires_in: Type.Optional(Type.String({ pattern: '^\\d+(\\.\\d+)?(ms|s|m|h|d)?$', maxLength: 32 })),
    description: Type.Optional(Type.String({ maxLength: 500 })),
  };
  const view = (r: AgentTokenRecord) => ({
    id: r.id,
    agent_id: r.agent_id,
    description: r.description,
    created_by: r.created_by,
    created_at: r.created_at,
    expires_at: r.expires_at,
    last_used_at: r.last_used_at,
    revoked_at: r.revoked_at,
    revoked_reason: r.revoked_reason,
  });
  const mint = async (
    req: { user: { sub: string } | null },
    agentId: string,
    body: { expires_in?: string; description?: string; rotate?: boolean },
    rotate: boolean,
  ) => {
    let expiresInSeconds: number | undefined;
    if (body.expires_in !== undefined) {
      expiresInSeconds = Math.ceil(parseDuration(body.expires_in, 'expires_in') / 1000);
      if (expiresInSeconds < 1 || expiresInSeconds > MAX_TOKEN_LIFETIME_S) throw new HttpError(400, 'expires_in must be between 1s and 3650d');
    }
    try {
      const m = await mintAgentToken(app.deps.pool, app.deps.tokens, {
        agentId,
        rotate,
        expiresInSeconds,
        description: body.description,
        createdBy: req.user?.sub,
      });
      app.deps.log.info(rotate ? 'agent token rotated' : 'agent token minted', {
        agent: agentId,
        token_id: m.record.id,
        revoked: m.revoked,
        by: req.user?.sub,
      });
      // The token is returned once; only its hash is stored.
      return { ...view(m.record), token: m.token, revoked: m.revoked };
    } catch (err) {
      if (err instanceof AgentTokenConflict) throw new HttpError(409, err.message);
      if (err instanceof TokenError) throw new HttpError(400, err.message);
      throw err;
    }
  };

  app.post<{ Body: { agent_id: string; rotate?: boolean; expires_in?: string; description?: string } }>(
    '/api/v1/agents/tokens',
    {
      ...admin,
      schema: {
        ...secured,
        body: Type.Object({ agent_id: AgentId, rotate: Type.Optional(Type.Boolean()), ...TokenOptions }, { additionalProperties: false }),
      },
    },
    async (req, reply) => reply.status(201).send(await mint(req, req.body.agent_id, req.body, req.body.rotate === true)),
  );

  app.post<{ Params: { agentId: string }; Body: { expires_in?: string; description?: string } | undefined }>(
    '/api/v1/agents/:agentId/tokens/rotate',
    {
      ...admin,
      schema: {
        ...secured,
        params: Type.Object({ agentId: AgentId }),
        body: Type.Optional(Type.Object(TokenOptions, { additionalProperties: false })),
      },
    },
    async (req, reply) => reply.status(201).send(await mint(req, req.params.agentId, req.body ?? {}, true)),
  );

  app.get<{ Params: { agentId: string } }>(
    '/api/v1/agents/:agentId/tokens',
    { ...admin, schema: { ...secured, params: Type.Object({ agentId: AgentId }) } },
    async (req) => (await listAgentTokens(app.deps.pool, req.params.agentId)).map(view),
  );

  app.delete<{ Params: { agentId: string; tokenId: string } }>(
    '/api/v1/agents/:agentId/tokens/:tokenId',
    {
      ...admin,
      schema: {
        ...secured,
        params: Type.Object({
          agentId: AgentId,
          tokenId: Type.String({ pattern: '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' }),
        }),
      },
    },
    async (req) => {
      // The UPDATE fires NOTIFY agent_token_revoked: every pod closes sockets using this token.
      const r = await revokeAgentToken(app.deps.pool, req.params.agentId, req.params.tokenId, `revoked by ${req.user?.sub ?? 'admin'}`);
      if (!r) throw new HttpError(404, `agent "${req.params.agentId}" has no token ${req.params.tokenId}`);
      app.deps.log.info('agent token revoked', { agent: r.agent_id, token_id: r.id, by: req.user?.sub });
      return view(r);
    },
  );
}
