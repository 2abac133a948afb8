/**
 * Builds the Fastify gateway: one plugin per concern, JSON schema on every route, OpenAPI at
 * /openapi.json. Long-running work is never done here: it is started as a Temporal workflow.
 */
import swagger from '@fastify/swagger';
import type { Client } from '@temporalio/client';
import Fastify, { FastifyInstance } from 'fastify';
import type { Pool } from 'pg';
import type { Logger } from '../config/log';
import type { AgentGateway } from './agents/gateway';
import type { AgentHub } from './agents/hub';
import { authPlugin } from './auth/plugin';
import type { TokenService } from './auth/tokens';
import type { GatewayConfig } from './config';
import type { Metrics } from './metrics';
import type { VncTunnel } from './vnc/tunnel';
import type { LiveEvents } from './events/live';
import { eventRoutes } from './routes/events';
import { consoleRoutes } from './console/routes';
import { viewerRoutes } from './vnc/viewer-routes';
import { agentRoutes } from './routes/agents';
import { migrationRoutes } from './routes/migrations';
import { routingPlugin } from './routing/router';
import { authRoutes } from './routes/auth';
import { healthRoutes } from './routes/health';
import { sessionRoutes } from './routes/sessions';
import { templateRoutes } from './routes/templates';
import { userRoutes } from './routes/users';
import { auditPlugin } from './audit/plugin';
import { auditRoutes } from './routes/audit';
import { licenseRoutes } from './routes/license';
import { securityHeaders } from './security-headers';
import { HttpError, httpReason } from './errors';

export interface AppDeps {
  config: GatewayConfig;
  pool: Pool;
  /**
   * For the reads behind the API's GETs (sign-in check, session list and detail): connections of
   * their own, so a burst of creates queueing for `pool` does not queue them (DB_READ_POOL_MAX).
   */
  readPool: Pool;
  temporal: Client;
  tokens: TokenService;
  metrics: Metrics;
  hub: AgentHub;
  agentGateway: AgentGateway;
  vnc: VncTunnel;
  live: LiveEvents;
  log: Logger;
}

declare module 'fastify' {
  interface FastifyInstance {
    deps: AppDeps;
  }
}

export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  const app = Fastify({
    logger: false,
    bodyLimit: deps.config.bodyLimit,
    // Client addresses (login throttling) come from X-Forwarded-For only behind a trusted proxy.
    trustProxy: typeof deps.config.trustProxy === 'number' ? hopsOf(deps.config.trustProxy) : deps.config.trustProxy,
    // Unknown fields are refused with a reason instead of silently dropped.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true, allErrors: false } },
  });
  app.decorate('deps', deps);
  await app.register(securityHeaders);
  await app.register(swagger, {
    openapi: {
      info: { title: 'StreamSpace v2 control plane', version: '2.0.0' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } } },
    },
  });
  app.addHook('onResponse', async (req, reply) => {
    deps.metrics.httpRequests.inc({ route: req.routeOptions.url ?? 'unknown', method: req.method, status: String(reply.statusCode) });
  });
  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown; code?: string }, req, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500;
    if (status >= 500) deps.log.error('request failed', { url: req.url, error: err.message });
    // Our own errors (HttpError) say why, also a 502/503 (which backend, what to try); anything
    // unexpected is only 'internal error' to the client (the log has it).
    const message = err.validation ? `invalid request: ${err.message}` : status >= 500 && !(err instanceof HttpError) ? 'internal error' : err.message;
    if (status === 503) void reply.header('retry-after', '5');
    void reply.status(status).send({ statusCode: status, error: httpReason(status), message });
  });
  app.setNotFoundHandler((req, reply) => {
    void reply.status(404).send({ statusCode: 404, error: 'Not Found', message: `no route ${req.method} ${req.url.split('?')[0]}` });
  });
  await app.register(healthRoutes);
  await app.register(authPlugin);
  await app.register(auditPlugin);
  await app.register(routingPlugin);
  await app.register(authRoutes);
  await app.register(userRoutes);
  await app.register(templateRoutes);
  await app.register(sessionRoutes);
  await app.register(agentRoutes);
  await app.register(viewerRoutes);
  await app.register(migrationRoutes);
  await app.register(eventRoutes);
  await app.register(consoleRoutes);
  await app.register(auditRoutes);
  await app.register(licenseRoutes);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
  return app;
}

/** TRUST_PROXY=<n>: trust the n nearest proxies. */
const hopsOf =
  (n: number) =>
  (_address: string, hop: number): boolean =>
    hop < n;

