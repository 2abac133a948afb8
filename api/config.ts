/** Gateway settings, read once from the environment (names as in the spec where it has them). */
import { createHmac } from 'node:crypto';
import os from 'node:os';
import { databaseUrl, envDuration, envInt, envOptional, envString, taskQueue, temporalAddress, temporalNamespace } from '../config/env';

export interface GatewayConfig {
  host: string;
  port: number;
  /** Second listener for agents (the spec's "websocket" port 8081); 0 disables it. */
  agentWsPort: number;
  databaseUrl: string;
  temporalAddress: string;
  temporalNamespace: string;
  taskQueue: string;
  jwtSecret: string;
  agentTokenSecret: string;
  jwtTtlSeconds: number;
  adminUsername: string;
  adminPassword: string;
  heartbeatTimeoutMs: number;
  vncProxyTimeoutMs: number;
  vncTicketTtlMs: number;
  vncOpenTimeoutMs: number;
  /** Base URL agents use to reach this pod directly for VNC streams (multi-pod); unset: same address as the control socket. */
  agentStreamUrl: string | null;
  sessionStartTimeoutMs: number;
  /** Session workflows continue as new past this many history events. */
  sessionHistoryLimit: number;
  hubBackend: 'memory' | 'redis';
  redisUrl: string | undefined;
  podId: string;
  bodyLimit: number;
  defaultSessionImage: string;
  /** Sweep interval for offline agents and undelivered commands. */
  sweepIntervalMs: number;
}

export function loadGatewayConfig(env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const jwtSecret = envString('JWT_SECRET', 'streamspace-dev-secret-change-me', env);
  const hubBackend = envString('AGENT_HUB_BACKEND', 'memory', env);
  if (hubBackend !== 'memory' && hubBackend !== 'redis') throw new Error(`AGENT_HUB_BACKEND: "${hubBackend}" must be memory or redis`);
  const redisUrl = envOptional('REDIS_URL', env);
  if (hubBackend === 'redis' && !redisUrl) throw new Error('AGENT_HUB_BACKEND=redis needs REDIS_URL');
  return {
    host: envString('HOST', '127.0.0.1', env),
    port: envInt('PORT', 8080, env),
    agentWsPort: envInt('AGENT_WS_PORT', 8081, env),
    databaseUrl: databaseUrl(env),
    temporalAddress: temporalAddress(env),
    temporalNamespace: temporalNamespace(env),
    taskQueue: taskQueue(env),
    jwtSecret,
    // A separate key for agent credentials: derived from JWT_SECRET unless set explicitly.
    agentTokenSecret: envString('AGENT_TOKEN_SECRET', createHmac('sha256', jwtSecret).update('streamspace-agent-tokens').digest('hex'), env),
    jwtTtlSeconds: Math.round(envDuration('JWT_TTL', '8h', env) / 1000),
    adminUsername: envString('ADMIN_USERNAME', 'admin', env),
    adminPassword: envString('ADMIN_PASSWORD', 'admin', env),
    heartbeatTimeoutMs: envDuration('AGENT_HEARTBEAT_TIMEOUT', '30s', env),
    vncProxyTimeoutMs: envDuration('VNC_PROXY_TIMEOUT', '5m', env),
    vncTicketTtlMs: envDuration('VNC_TICKET_TTL', '30s', env),
    vncOpenTimeoutMs: envDuration('VNC_OPEN_TIMEOUT', '10s', env),
    agentStreamUrl: envOptional('AGENT_STREAM_URL', env) ?? null,
    sessionStartTimeoutMs: envDuration('SESSION_START_TIMEOUT', '5m', env),
    sessionHistoryLimit: envInt('SESSION_HISTORY_LIMIT', 2000, env),
    hubBackend,
    redisUrl,
    podId: envString('POD_ID', `${os.hostname()}-${process.pid}`, env),
    bodyLimit: envInt('BODY_LIMIT', 64 * 1024, env),
    defaultSessionImage: envString('DEFAULT_SESSION_IMAGE', 'streamspace/session:local', env),
    sweepIntervalMs: envDuration('AGENT_SWEEP_INTERVAL', '2s', env),
  };
}
