/** Gateway settings, read once from the environment (names as in the spec where it has them). */
import os from 'node:os';
import type { Client as TemporalClient } from '@temporalio/client';
import { Client as PgClient } from 'pg';
import type { SessionWorkflowSettings } from '../activities/session-adoption';
import {
  databaseUrl,
  devMode,
  envBool,
  envDuration,
  envInt,
  envOptional,
  envString,
  KNOWN_DEFAULT_SECRETS,
  refuseToStart,
  taskQueue,
  temporalAddress,
  temporalNamespace,
} from '../config/env';

/** Used only in STREAMSPACE_DEV_MODE when the variable is unset (and refused outside it). */
export const DEV_JWT_SECRET = 'streamspace-dev-jwt-secret-not-for-production-use';
export const DEV_AGENT_TOKEN_SECRET = 'streamspace-dev-agent-secret-not-for-production-use';
export const DEV_ADMIN_PASSWORD = 'admin';

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
  /** For the first bootstrap only (no admin yet); '' when unset outside dev mode (main.ts refuses to bootstrap then). */
  adminPassword: string;
  devMode: boolean;
  /** Fastify trustProxy: false, true, a hop count, or addresses/CIDRs (TRUST_PROXY). */
  trustProxy: boolean | number | string[];
  /** Failed logins allowed per username / per client address within loginWindowMs before 429. */
  loginMaxFailuresPerUser: number;
  loginMaxFailuresPerAddress: number;
  loginWindowMs: number;
  heartbeatTimeoutMs: number;
  vncProxyTimeoutMs: number;
  vncTicketTtlMs: number;
  vncOpenTimeoutMs: number;
  /** Base URL agents use to reach this pod directly for VNC streams (multi-pod); unset: same address as the control socket. */
  agentStreamUrl: string | null;
  /** This pod's address for the other API pods (VNC stream hand-off, POD_INTERNAL_URL); unset: HOST:AGENT_WS_PORT unless HOST is a wildcard. */
  podInternalUrl: string | null;
  sessionStartTimeoutMs: number;
  /** A new session's start command is placed and issued with its row (SESSION_ISSUE_START_ON_CREATE; api/sessions/start-command.ts). */
  issueStartOnCreate: boolean;
  /** Connections for the API's reads (AppDeps.readPool; DB_READ_POOL_MAX). */
  readPoolMax: number;
  /** Session workflows continue as new past this many history events. */
  sessionHistoryLimit: number;
  /** New session workflows keep their state in the StreamSpaceState search attribute (SESSION_STATE_SEARCH_ATTRIBUTE). */
  sessionStateSearchAttribute: boolean;
  hubBackend: 'memory' | 'redis';
  redisUrl: string | undefined;
  podId: string;
  bodyLimit: number;
  defaultSessionImage: string;
  /** Sweep interval for offline agents and undelivered commands. */
  sweepIntervalMs: number;
  /** Sessions whose workflow start is unconfirmed this long are adopted (SESSION_REAPER_GRACE). */
  sessionReaperGraceMs: number;
  sessionReaperIntervalMs: number;
  /** Temporal Web UI base URL for links from the console (TEMPORAL_UI_URL); null: no links. */
  temporalUiUrl: string | null;
}

/**
 * Parses the gateway's settings. Secrets are not judged here (main.ts runs requireSecrets first):
 * outside dev mode an unset JWT_SECRET / AGENT_TOKEN_SECRET stays empty, which TokenService
 * refuses to sign or verify with; in dev mode they get the public DEV_* values.
 */
export function loadGatewayConfig(env: NodeJS.ProcessEnv = process.env): GatewayConfig {
  const dev = devMode(env);
  const jwtSecret = envString('JWT_SECRET', dev ? DEV_JWT_SECRET : '', env);
  const hubBackend = envString('AGENT_HUB_BACKEND', 'memory', env);
  if (hubBackend !== 'memory' && hubBackend !== 'redis') throw new Error(`AGENT_HUB_BACKEND: "${hubBackend}" must be memory or redis`);
  const redisUrl = envOptional('REDIS_URL', env);
  if (hubBackend === 'redis' && !redisUrl) throw new Error('AGENT_HUB_BACKEND=redis needs REDIS_URL');
  return {
    // In a container (anything but a developer machine) the gateway must be reachable from outside.
    host: envString('HOST', dev ? '127.0.0.1' : '0.0.0.0', env),
    port: envInt('PORT', 8080, env),
    agentWsPort: envInt('AGENT_WS_PORT', 8081, env),
    databaseUrl: databaseUrl(env),
    temporalAddress: temporalAddress(env),
    temporalNamespace: temporalNamespace(env),
    taskQueue: taskQueue(env),
    jwtSecret,
    // A separate key for agent credentials (never derived from JWT_SECRET).
    agentTokenSecret: envString('AGENT_TOKEN_SECRET', dev ? DEV_AGENT_TOKEN_SECRET : '', env),
    jwtTtlSeconds: Math.round(envDuration('JWT_TTL', '8h', env) / 1000),
    adminUsername: envString('ADMIN_USERNAME', 'admin', env),
    adminPassword: envString('ADMIN_PASSWORD', dev ? DEV_ADMIN_PASSWORD : '', env),
    devMode: dev,
    trustProxy: parseTrustProxy(envOptional('TRUST_PROXY', env)),
    loginMaxFailuresPerUser: envInt('LOGIN_MAX_FAILURES_PER_USER', 5, env),
    loginMaxFailuresPerAddress: envInt('LOGIN_MAX_FAILURES_PER_ADDRESS', 20, env),
    loginWindowMs: envDuration('LOGIN_THROTTLE_WINDOW', '15m', env),
    heartbeatTimeoutMs: envDuration('AGENT_HEARTBEAT_TIMEOUT', '30s', env),
    vncProxyTimeoutMs: envDuration('VNC_PROXY_TIMEOUT', '5m', env),
    vncTicketTtlMs: envDuration('VNC_TICKET_TTL', '30s', env),
    vncOpenTimeoutMs: envDuration('VNC_OPEN_TIMEOUT', '10s', env),
    agentStreamUrl: envOptional('AGENT_STREAM_URL', env) ?? null,
    podInternalUrl: envOptional('POD_INTERNAL_URL', env) ?? null,
    sessionStartTimeoutMs: envDuration('SESSION_START_TIMEOUT', '5m', env),
    issueStartOnCreate: envBool('SESSION_ISSUE_START_ON_CREATE', true, env),
    readPoolMax: envInt('DB_READ_POOL_MAX', 5, env),
    sessionHistoryLimit: envInt('SESSION_HISTORY_LIMIT', 2000, env),
    sessionStateSearchAttribute: envBool('SESSION_STATE_SEARCH_ATTRIBUTE', false, env),
    hubBackend,
    redisUrl,
    podId: envString('POD_ID', `${os.hostname()}-${process.pid}`, env),
    bodyLimit: envInt('BODY_LIMIT', 64 * 1024, env),
    defaultSessionImage: envString('DEFAULT_SESSION_IMAGE', 'streamspace/session:local', env),
    sweepIntervalMs: envDuration('AGENT_SWEEP_INTERVAL', '2s', env),
    sessionReaperGraceMs: envDuration('SESSION_REAPER_GRACE', '15s', env),
    sessionReaperIntervalMs: envDuration('SESSION_REAPER_INTERVAL', '10s', env),
    // The dev stack's Temporal dev server serves its UI on :58233 (scripts/services.sh).
    temporalUiUrl: envOptional('TEMPORAL_UI_URL', env)?.replace(/\/+$/, '') ?? (dev ? 'http://127.0.0.1:58233' : null),
  };
}

/** TRUST_PROXY: unset/false, true, a number of hops, or a comma-separated list of proxy addresses/CIDRs. */
function parseTrustProxy(v: string | undefined): boolean | number | string[] {
  if (!v || /^(0|false|no|off)$/i.test(v)) return false;
  if (/^(true|yes|on)$/i.test(v)) return true;
  if (/^\d+$/.test(v)) return Number(v);
  return v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** The minimum length of a bootstrap ADMIN_PASSWORD outside dev mode. */
export const MIN_ADMIN_PASSWORD_LENGTH = 12;

/**
 * First start (no admin in `users`): outside dev mode ADMIN_PASSWORD must be set, at least
 * MIN_ADMIN_PASSWORD_LENGTH characters and not a published default, or the gateway refuses to
 * start (one line, exit 78). Once an admin exists ADMIN_PASSWORD is not read again.
 */
export async function checkAdminBootstrap(config: GatewayConfig): Promise<void> {
  const pg = new PgClient({ connectionString: config.databaseUrl });
  await pg.connect();
  let admins: number;
  try {
    admins = (await pg.query(`SELECT 1 FROM users WHERE role = 'admin' LIMIT 1`)).rowCount ?? 0;
  } finally {
    await pg.end().catch(() => undefined);
  }
  if (admins) return;
  const pw = config.adminPassword;
  if (config.devMode) {
    if (pw === DEV_ADMIN_PASSWORD) process.stderr.write(`WARNING: api bootstraps the admin with the dev-mode password "${DEV_ADMIN_PASSWORD}"\n`);
    return;
  }
  const problem = !pw
    ? 'ADMIN_PASSWORD must be set for the first start (no admin user exists yet)'
    : KNOWN_DEFAULT_SECRETS.has(pw.toLowerCase())
      ? 'ADMIN_PASSWORD is a published default value: set your own'
      : pw.length < MIN_ADMIN_PASSWORD_LENGTH
        ? `ADMIN_PASSWORD must be at least ${MIN_ADMIN_PASSWORD_LENGTH} characters long`
        : null;
  if (problem) refuseToStart('api', problem);
}

/** How this gateway starts session workflows (activities/session-adoption.ts). */
export function sessionWorkflowSettings(config: GatewayConfig, temporal: TemporalClient): SessionWorkflowSettings {
  return {
    temporal,
    taskQueue: config.taskQueue,
    startTimeoutMs: config.sessionStartTimeoutMs,
    historyLimit: config.sessionHistoryLimit,
    stateSearchAttribute: config.sessionStateSearchAttribute,
  };
}
