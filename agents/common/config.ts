/** Settings every agent reads (names as in the spec's agent environment). */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { devMode, envBool, envDuration, envInt, envOptional, envRequired, envString } from '../../config/env';
import type { Capacity, Platform } from '../../protocol/messages';

export interface AgentConfig {
  agentId: string;
  controlPlaneUrl: string;
  token: string;
  platform: Platform;
  region: string | null;
  clusterId: string | null;
  capacity: Capacity;
  reconnectInitialDelayMs: number;
  reconnectMaxDelayMs: number;
  healthPort: number;
  healthHost: string;
  /** This replica's identity for leader election and logs. */
  identity: string;
}

/**
 * AGENT_TOKEN_FILE: the agent's credential read from a file (a mounted Secret, or the volume the
 * compose file's agent-bootstrap step writes it to) when AGENT_TOKEN is unset; surrounding whitespace
 * is dropped. Returns env with AGENT_TOKEN set from the file; a file that cannot be read or is empty
 * leaves AGENT_TOKEN unset and says why on stderr (the start-up guard then refuses to start).
 */
export function applyAgentTokenFile(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const file = envOptional('AGENT_TOKEN_FILE', env);
  if (!file || envOptional('AGENT_TOKEN', env) !== undefined) return env;
  try {
    const token = readFileSync(file, 'utf8').trim();
    if (token) env.AGENT_TOKEN = token;
    else process.stderr.write(`AGENT_TOKEN_FILE ${file} is empty\n`);
  } catch (err) {
    process.stderr.write(`AGENT_TOKEN_FILE ${file} cannot be read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})\n`);
  }
  return env;
}
// At load, before any agent's main() runs its start-up guard on AGENT_TOKEN.
applyAgentTokenFile();

export function loadAgentConfig(platform: Platform, env: NodeJS.ProcessEnv = process.env): AgentConfig {
  const declared = envString('PLATFORM', platform, env);
  if (declared !== platform) throw new Error(`PLATFORM=${declared} but this is the ${platform} agent`);
  const maxCpu = envOptional('MAX_CPU', env);
  const maxMemory = envOptional('MAX_MEMORY', env);
  return {
    agentId: envRequired('AGENT_ID', env),
    controlPlaneUrl: envRequired('CONTROL_PLANE_URL', env),
    token: envRequired('AGENT_TOKEN', applyAgentTokenFile(env)),
    platform,
    region: envOptional('REGION', env) ?? null,
    clusterId: envOptional('CLUSTER_ID', env) ?? null,
    capacity: {
      max_sessions: envInt('MAX_SESSIONS', platform === 'docker' ? 50 : 100, env),
      ...(maxCpu ? { max_cpu: Number(maxCpu) } : {}),
      ...(maxMemory ? { max_memory: Number(maxMemory) } : {}),
    },
    reconnectInitialDelayMs: envDuration('RECONNECT_INITIAL_DELAY', '100ms', env),
    reconnectMaxDelayMs: envDuration('RECONNECT_MAX_DELAY', '5s', env),
    healthPort: envInt('HEALTH_PORT', 8082, env),
    // Probes come from outside the container: all interfaces, except on a developer machine.
    healthHost: envString('HEALTH_HOST', devMode(env) ? '127.0.0.1' : '0.0.0.0', env),
    identity: envString('POD_NAME', `${os.hostname()}_${process.pid}`, env),
  };
}

/** HA_BACKEND values this agent offers (the spec also names "swarm": refused, see loadHaConfig). */
export type HaBackend = 'redis' | 'file';

/** The Docker agent's leader election settings (ENABLE_HA=true); docs/DEPLOY-DOCKER-AGENT.md. */
export interface HaConfig {
  backend: HaBackend;
  /** REDIS_URL (HA_BACKEND=redis). */
  redisUrl: string | null;
  /** HA_LOCK_FILE (HA_BACKEND=file): the lease file every replica on the host shares. */
  lockFile: string;
  /** The state directory the replicas share (AGENT_STATE_DIR, else one under the OS temp dir); each keeps its journal in its own sub-directory. */
  stateBase: string | null;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  /** HA_IDENTITY: this replica's name in logs and in the lease (default <hostname>-<pid>). */
  identity: string;
}

/** Why HA_BACKEND=swarm is refused (printed at start). */
export const SWARM_REFUSAL =
  'HA_BACKEND=swarm is not offered: Docker Swarm has no lease primitive the agent could fence on ' +
  '(its Raft store is internal to the managers; services, configs and secrets have no compare-and-set with expiry), so two ' +
  'agents could act on the same Docker engine at once. Use HA_BACKEND=redis (replicas on several hosts, one Redis) ' +
  'or HA_BACKEND=file (replicas on one host)';

/**
 * ENABLE_HA, HA_BACKEND (redis|file), REDIS_URL, HA_LOCK_FILE, LEASE_DURATION (15s), RENEW_DEADLINE
 * (default ⅔ of LEASE_DURATION: 10s), RETRY_PERIOD (default LEASE_DURATION / 7.5: 2s), HA_IDENTITY.
 * null when ENABLE_HA is off. Throws with the variable's name on anything unusable.
 */
export function loadHaConfig(agentId: string, env: NodeJS.ProcessEnv = process.env): HaConfig | null {
  if (!envBool('ENABLE_HA', false, env)) return null;
  const backend = envString('HA_BACKEND', 'redis', env).toLowerCase();
  if (backend === 'swarm') throw new Error(SWARM_REFUSAL);
  if (backend !== 'redis' && backend !== 'file') throw new Error(`HA_BACKEND must be redis or file, not "${backend}"`);
  const leaseDurationMs = envDuration('LEASE_DURATION', '15s', env);
  const renewDeadlineMs = envDuration('RENEW_DEADLINE', `${Math.round((leaseDurationMs * 2) / 3)}ms`, env);
  const retryPeriodMs = envDuration('RETRY_PERIOD', `${Math.round(leaseDurationMs / 7.5)}ms`, env);
  const stateDir = envOptional('AGENT_STATE_DIR', env);
  const stateBase = stateDir === 'none' ? null : (stateDir ?? path.join(os.tmpdir(), 'streamspace-agent', agentId));
  const lockFile = envOptional('HA_LOCK_FILE', env) ?? (stateBase ? path.join(stateBase, 'leader.lease') : '');
  if (backend === 'file' && !lockFile) throw new Error('HA_BACKEND=file needs HA_LOCK_FILE when AGENT_STATE_DIR=none');
  const redisUrl = envOptional('REDIS_URL', env) ?? null;
  if (backend === 'redis' && !redisUrl) throw new Error('HA_BACKEND=redis needs REDIS_URL (redis://:password@host:6379)');
  return {
    backend,
    redisUrl,
    lockFile,
    stateBase,
    leaseDurationMs,
    renewDeadlineMs,
    retryPeriodMs,
    identity: envString('HA_IDENTITY', `${os.hostname()}-${process.pid}`, env),
  };
}
