/** Settings every agent reads (names as in the spec's agent environment). */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { devMode, envDuration, envInt, envOptional, envRequired, envString } from '../../config/env';
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
