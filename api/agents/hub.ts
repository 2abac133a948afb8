/**
 * AgentHub knows which agent is connected where and delivers control messages to it.
 * The memory backend serves one API pod; the Redis backend (AGENT_HUB_BACKEND=redis) lets any pod
 * reach an agent whose socket another pod holds. Durable state (commands, agent rows) lives in
 * PostgreSQL either way, so no pod holds anything another pod could not rebuild.
 */
import type { ControlPlaneMessage } from '../../protocol/messages';

/** How often agents heartbeat (sent to them in `registered`): a third of AGENT_HEARTBEAT_TIMEOUT. */
export const heartbeatIntervalMs = (heartbeatTimeoutMs: number): number => Math.max(100, Math.floor(heartbeatTimeoutMs / 3));

/**
 * How often a pod writes the heartbeats its agents sent since the last write, all in one
 * statement (api/agents/gateway.ts): half a heartbeat interval. The recorded beat (agents.last_heartbeat,
 * the beat's own time) is therefore up to this much older than the newest beat the pod has seen.
 */
export const livenessWriteIntervalMs = (heartbeatTimeoutMs: number): number => Math.max(50, Math.floor(heartbeatIntervalMs(heartbeatTimeoutMs) / 2));

export interface AgentConnection {
  readonly agentId: string;
  readonly agentDbId: string;
  /** The platform it registered with (metrics labels). */
  readonly platform?: string;
  readonly connId: string;
  /** The agent_tokens record the socket authenticated with (closed when it is revoked or expires). */
  readonly tokenId?: string;
  send(msg: ControlPlaneMessage): boolean;
  close(code: number, reason: string): void;
}

export interface AgentHub {
  readonly backend: 'memory' | 'redis';
  /** Makes conn the agent's current connection on this pod; returns the one it replaces here. */
  attach(conn: AgentConnection): Promise<AgentConnection | undefined>;
  /** Forgets conn if it is still current; true when it was. */
  detach(conn: AgentConnection): Promise<boolean>;
  local(agentDbId: string): AgentConnection | undefined;
  localConnections(): AgentConnection[];
  /** Delivers a control message to the agent wherever it is connected; false if nowhere. */
  sendToAgent(agentDbId: string, msg: ControlPlaneMessage): Promise<boolean>;
  close(): Promise<void>;
}

export class MemoryAgentHub implements AgentHub {
  readonly backend = 'memory' as const;
  private readonly byAgent = new Map<string, AgentConnection>();

  async attach(conn: AgentConnection): Promise<AgentConnection | undefined> {
    const previous = this.byAgent.get(conn.agentDbId);
    this.byAgent.set(conn.agentDbId, conn);
    return previous && previous !== conn ? previous : undefined;
  }

  async detach(conn: AgentConnection): Promise<boolean> {
    if (this.byAgent.get(conn.agentDbId) !== conn) return false;
    this.byAgent.delete(conn.agentDbId);
    return true;
  }

  local(agentDbId: string): AgentConnection | undefined {
    return this.byAgent.get(agentDbId);
  }

  localConnections(): AgentConnection[] {
    return [...this.byAgent.values()];
  }

  async sendToAgent(agentDbId: string, msg: ControlPlaneMessage): Promise<boolean> {
    return this.byAgent.get(agentDbId)?.send(msg) ?? false;
  }

  async close(): Promise<void> {
    this.byAgent.clear();
  }
}
