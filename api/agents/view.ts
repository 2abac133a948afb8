/** How an agent looks from the API and the live stream (GET /api/v1/agents, `agent` events). */
import type { Pool } from 'pg';
import { livenessWriteIntervalMs } from './hub';

interface AgentRow {
  agent_id: string;
  status: string;
  platform: string;
  region: string | null;
  cluster_id: string | null;
  capacity: { max_sessions?: number } | null;
  current_sessions: number;
  last_heartbeat: Date | null;
  heartbeat_age_s: number | null;
  metadata: Record<string, unknown> | null;
}

export type AgentHealth = 'online' | 'warning' | 'offline';

/**
 * online: heartbeat younger than half of AGENT_HEARTBEAT_TIMEOUT (plus the lag of the gateway's
 * batched liveness write, see livenessWriteIntervalMs); warning: older (a beat or two missed, not
 * yet declared offline); offline: the sweep (or the socket's close) said so.
 */
export function agentHealth(status: string, ageS: number | null, heartbeatTimeoutMs: number): AgentHealth {
  if (status !== 'online' || ageS === null) return 'offline';
  return ageS * 1000 <= heartbeatTimeoutMs / 2 + livenessWriteIntervalMs(heartbeatTimeoutMs) ? 'online' : 'warning';
}

function present(a: AgentRow, heartbeatTimeoutMs: number) {
  const meta = a.metadata ?? {};
  const identity = typeof meta.identity === 'string' && meta.identity ? meta.identity : null;
  return {
    agent_id: a.agent_id,
    status: a.status,
    health: agentHealth(a.status, a.heartbeat_age_s, heartbeatTimeoutMs),
    heartbeat_age_s: a.heartbeat_age_s,
    platform: a.platform,
    region: a.region,
    cluster_id: a.cluster_id,
    capacity: { ...(a.capacity ?? {}), max_sessions: a.capacity?.max_sessions ?? 0, current_sessions: a.current_sessions },
    last_heartbeat: a.last_heartbeat,
    metadata: meta,
    // The replica that holds the lease is the one connected (followers wait without a socket).
    ha: identity ? { identity, leader: true } : null,
  };
}
export type AgentView = ReturnType<typeof present>;

export async function loadAgents(pool: Pool, heartbeatTimeoutMs: number, agentIds?: string[]): Promise<AgentView[]> {
  const r = await pool.query<AgentRow>(
    `SELECT a.agent_id, a.status, a.platform, a.region, a.cluster_id, a.capacity, a.last_heartbeat, a.metadata,
            EXTRACT(EPOCH FROM (NOW() - a.last_heartbeat))::float8 AS heartbeat_age_s,
            (SELECT count(*)::int FROM sessions s WHERE s.agent_id = a.id AND s.state IN ('pending', 'running', 'terminating')) AS current_sessions
       FROM agents a ${agentIds ? 'WHERE a.agent_id = ANY($1::text[])' : ''} ORDER BY a.platform, a.agent_id`,
    agentIds ? [agentIds] : [],
  );
  return r.rows.map((a) => present(a, heartbeatTimeoutMs));
}
