/**
 * Wires the gateway together: database, Temporal client, AgentHub, the HTTP app and the
 * WebSocket upgrade routing (agent control sockets; VNC streams). Used by main.ts and tests.
 */
import { Client, Connection } from '@temporalio/client';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { Pool } from 'pg';
import { createLogger, Logger } from '../config/log';
import { temporalConnectionOptions } from '../config/temporal';
import { createPool } from '../db/pool';
import { ensureUser } from '../db/users';
import { AGENT_CONNECT_PATH, AGENT_STREAM_PATH } from '../protocol/messages';
import { AgentGateway, rejectUpgrade } from './agents/gateway';
import { createRepairHandler } from './agents/repair';
import { SessionReaper } from './sessions/reaper';
import { AgentHub, MemoryAgentHub } from './agents/hub';
import { RedisAgentHub } from './agents/redis-hub';
import { buildApp } from './app';
import { LiveEvents } from './events/live';
import { InputTracker } from './sessions/input-tracker';
import { hashPassword } from './auth/tokens';
import { TokenService } from './auth/tokens';
import { sessionWorkflowSettings, type GatewayConfig } from './config';
import { createMetrics } from './metrics';
import { createPodHandoff, VNC_POD_HOP_PATH } from './vnc/pod-hop';
import { VIEWER_SOCKET_PATH, VncTunnel } from './vnc/tunnel';

export interface RunningGateway {
  app: FastifyInstance;
  url: string;
  agentUrl: string | null;
  tokens: TokenService;
  pool: Pool;
  close(): Promise<void>;
}

export type UpgradeHandler = (req: http.IncomingMessage, socket: Duplex, head: Buffer) => boolean;

export async function startGateway(config: GatewayConfig, log: Logger = createLogger('api')): Promise<RunningGateway> {
  const pool = createPool(config.databaseUrl);
  await pool.query('SELECT 1');
  const readPool = createPool(config.databaseUrl, { max: config.readPoolMax });
  log.info('Connected to database');
  await bootstrap(pool, config, log);

  // Lazy: the gateway starts (and /ready says why it is not ready) even while Temporal is down.
  // TLS / mTLS / API key from TEMPORAL_TLS_* and TEMPORAL_API_KEY (config/temporal.ts); the address from config.
  const connection = Connection.lazy({ ...temporalConnectionOptions(), address: config.temporalAddress });
  const temporal = new Client({ connection, namespace: config.temporalNamespace });
  const tokens = new TokenService(config.jwtSecret, config.agentTokenSecret, config.jwtTtlSeconds);
  const metrics = createMetrics();
  metrics.countSessionsFrom(pool);
  metrics.agentHubBackend.set(1, { backend: config.hubBackend });
  const hub: AgentHub = await createHub(config, log, metrics);
  const agentGateway = new AgentGateway({
    pool,
    databaseUrl: config.databaseUrl,
    hub,
    tokens,
    heartbeatTimeoutMs: config.heartbeatTimeoutMs,
    sweepIntervalMs: config.sweepIntervalMs,
    podId: config.podId,
    log,
    metrics,
    onDivergence: createRepairHandler({ temporal, taskQueue: config.taskQueue, log }),
  });
  await agentGateway.start();
  const reaper = new SessionReaper({
    pool,
    log,
    workflows: sessionWorkflowSettings(config, temporal),
    graceMs: config.sessionReaperGraceMs,
    intervalMs: config.sessionReaperIntervalMs,
  });
  reaper.start();
  const input = new InputTracker(pool, log);
  const vnc = new VncTunnel({
    pool,
    hub,
    tokens,
    metrics,
    log,
    idleTimeoutMs: config.vncProxyTimeoutMs,
    ticketTtlMs: config.vncTicketTtlMs,
    openTimeoutMs: config.vncOpenTimeoutMs,
    agentStreamUrl: config.agentStreamUrl,
    // Several pods behind an Ingress: a stream socket landing on another pod is handed to this one.
    handoff: await createPodHandoff(config, log, metrics),
    input,
  });
  agentGateway.streamErrorHandler = (streamId, error) => vnc.streamFailed(streamId, error);

  // The console's live stream (its own LISTEN connection; nothing is loaded while nobody watches).
  const live = new LiveEvents(pool, config.databaseUrl, config.heartbeatTimeoutMs, log);
  await live.start();

  const app = await buildApp({ config, pool, readPool, temporal, tokens, metrics, hub, agentGateway, vnc, live, log });
  const upgradeHandlers: UpgradeHandler[] = [
    (req, socket, head) => {
      if (pathOf(req) !== AGENT_CONNECT_PATH) return false;
      agentGateway.handleUpgrade(req, socket, head);
      return true;
    },
    (req, socket, head) => {
      if (pathOf(req) !== AGENT_STREAM_PATH) return false;
      vnc.handleAgentStreamUpgrade(req, socket, head).catch((err: Error) => {
        log.error('agent stream upgrade failed', { error: err.message });
        rejectUpgrade(socket, 500, 'internal error');
      });
      return true;
    },
    (req, socket, head) => {
      if (pathOf(req) !== VNC_POD_HOP_PATH) return false;
      vnc.handlePodHopUpgrade(req, socket, head);
      return true;
    },
    (req, socket, head) => {
      const m = VIEWER_SOCKET_PATH.exec(pathOf(req));
      if (!m) return false;
      vnc.handleViewerUpgrade(req, socket, head, decodeURIComponent(m[1])).catch((err: Error) => {
        log.error('VNC upgrade failed', { error: err.message });
        rejectUpgrade(socket, 500, 'internal error');
      });
      return true;
    },
  ];
  const onUpgrade = (agentsOnly: boolean) => (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    // The dedicated agent port accepts the control socket on any path (CONTROL_PLANE_URL may have none).
    if (agentsOnly && pathOf(req) !== AGENT_CONNECT_PATH && !pathOf(req).startsWith('/api/v1/agents/')) {
      agentGateway.handleUpgrade(req, socket, head);
      return;
    }
    for (const h of upgradeHandlers) if (h(req, socket, head)) return;
    rejectUpgrade(socket, 404, `no WebSocket endpoint at ${pathOf(req)}`);
  };
  app.server.on('upgrade', onUpgrade(false));
  await app.listen({ host: config.host, port: config.port });
  const addr = app.server.address() as AddressInfo;
  const url = `http://${config.host}:${addr.port}`;
  log.info(`Server started on :${addr.port}`, { url });

  let agentServer: http.Server | null = null;
  let agentUrl: string | null = null;
  if (config.agentWsPort > 0) {
    agentServer = http.createServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'application/json' }).end(JSON.stringify({ message: 'agents connect here with a WebSocket upgrade' }));
    });
    agentServer.on('upgrade', onUpgrade(true));
    await new Promise<void>((resolve, reject) => {
      agentServer!.once('error', reject);
      agentServer!.listen(config.agentWsPort, config.host, () => resolve());
    });
    agentUrl = `ws://${config.host}:${(agentServer.address() as AddressInfo).port}`;
    log.info(`Agent WebSocket listener on ${agentUrl}`);
  }
  log.info(hub.backend === 'redis' ? 'Redis AgentHub initialized (multi-pod mode)' : 'In-memory AgentHub initialized (single-pod mode)');

  return {
    app,
    url,
    agentUrl,
    tokens,
    pool,
    async close() {
      vnc.close();
      await input.close();
      reaper.stop();
      await live.close();
      await agentGateway.close();
      if (agentServer) await new Promise<void>((r) => agentServer!.close(() => r()));
      await app.close();
      await hub.close();
      await connection.close().catch(() => undefined);
      await pool.end();
      await readPool.end();
    },
  };
}

async function createHub(config: GatewayConfig, log: Logger, metrics: ReturnType<typeof createMetrics>): Promise<AgentHub> {
  if (config.hubBackend !== 'redis') return new MemoryAgentHub();
  if (!config.redisUrl) throw new Error('AGENT_HUB_BACKEND=redis needs REDIS_URL');
  // Fails start-up (with the reason) when Redis is unreachable: a pod that cannot reach the
  // other pods' agents must not pretend to be part of the cluster.
  return new RedisAgentHub({
    url: config.redisUrl,
    podId: config.podId,
    log,
    metrics,
    ttlMs: Math.max(60_000, 3 * config.heartbeatTimeoutMs),
  }).connect();
}

function pathOf(req: http.IncomingMessage): string {
  return (req.url ?? '/').split('?')[0];
}

/** First start: create the admin from ADMIN_USERNAME/ADMIN_PASSWORD and the default templates. */
async function bootstrap(pool: Pool, config: GatewayConfig, log: Logger): Promise<void> {
  const admins = await pool.query(`SELECT 1 FROM users WHERE role = 'admin' LIMIT 1`);
  if (!admins.rowCount) {
    const hash = await hashPassword(config.adminPassword);
    const { created } = await ensureUser(pool, { username: config.adminUsername, role: 'admin', passwordHash: hash });
    if (!created) await pool.query(`UPDATE users SET role = 'admin', password_hash = $2 WHERE username = $1`, [config.adminUsername, hash]);
    log.info('Bootstrapped admin user', { username: config.adminUsername });
    if (config.adminPassword === 'admin') log.warn('ADMIN_PASSWORD is the default "admin": set it before exposing this gateway');
  }
  const manifest = (displayName: string, description: string, category: string) => ({
    displayName,
    description,
    category,
    baseImage: config.defaultSessionImage,
    defaultResources: { memory: '2Gi', cpu: '1000m' },
    ports: [{ name: 'vnc', containerPort: 5900 }],
    volumeMounts: [{ name: 'user-home', mountPath: '/config' }],
    vnc: { enabled: true, port: 5900, protocol: 'rfb' },
    tags: [category],
  });
  const defaults = [
    ['firefox-browser', manifest('Firefox Web Browser', 'Desktop session with a browser', 'browsers')],
    ['terminal', manifest('Terminal', 'Desktop session with a terminal', 'development')],
  ] as const;
  for (const [name, m] of defaults) {
    // Not over a template of the same name in v1's catalog (a migrated install keeps its own).
    await pool.query(
      `INSERT INTO templates (name, display_name, description, category, manifest)
       SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM template_catalog WHERE name = $6)
       ON CONFLICT (name) DO NOTHING`,
      [name, m.displayName, m.description, m.category, m, name],
    );
  }
}
