/**
 * The console's live stream: PostgreSQL NOTIFY (session_changed, agent_changed; triggers in
 * migration 009) → one batched load per burst → every subscribed browser on this pod.
 * Cost is O(changes): a burst of notifications is one query, whatever the number of viewers;
 * heartbeats notify nothing. A subscriber that reconnects sends the last event id (the session
 * row's change_seq) and is sent what changed meanwhile.
 */
import type { Pool } from 'pg';
import type { Logger } from '../../config/log';
import { PgListener } from '../../db/listener';
import { loadSessions, presentSession, sessionsChangedSince, SessionRow, SessionView } from '../sessions/view';
import { AgentView, loadAgents } from '../agents/view';

export const CHANNEL_SESSION_CHANGED = 'session_changed';
export const CHANNEL_AGENT_CHANGED = 'agent_changed';
/** How long notifications are gathered before one load (a burst of changes is one query). */
const BATCH_MS = 50;
/** A reconnect that missed more than this gets `resync` (refetch) instead of a replay. */
export const CATCH_UP_LIMIT = 500;

export interface Subscriber {
  /** users.id; admins see every session. */
  uid: string;
  admin: boolean;
  session(view: SessionView, seq: string | null): void;
  agent(view: AgentView): void;
  resync(): void;
}

export class LiveEvents {
  private readonly listener: PgListener;
  private readonly subscribers = new Set<Subscriber>();
  private sessionIds = new Set<string>();
  private agentIds = new Set<string>();
  private timer: NodeJS.Timeout | null = null;
  private lostSince: number | null = null;

  constructor(
    private readonly pool: Pool,
    databaseUrl: string,
    private readonly heartbeatTimeoutMs: number,
    private readonly log: Logger,
  ) {
    this.listener = new PgListener(databaseUrl, [CHANNEL_SESSION_CHANGED, CHANNEL_AGENT_CHANGED], log);
    this.listener.on('notification', (channel: string, payload: string) => {
      if (!this.subscribers.size) return;
      (channel === CHANNEL_SESSION_CHANGED ? this.sessionIds : this.agentIds).add(payload);
      this.timer ??= setTimeout(() => void this.flush(), BATCH_MS);
    });
    // Notifications sent while the LISTEN connection was down are lost: every viewer refetches.
    this.listener.on('reconnected', () => {
      if (this.lostSince !== null) for (const s of this.subscribers) s.resync();
      this.lostSince = Date.now();
    });
  }

  async start(): Promise<void> {
    await this.listener.start();
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    await this.listener.close();
  }

  get size(): number {
    return this.subscribers.size;
  }

  subscribe(s: Subscriber): () => void {
    this.subscribers.add(s);
    return () => this.subscribers.delete(s);
  }

  /** What a reconnecting subscriber missed after `lastSeq`: replayed, or `resync` if too much. */
  async catchUp(s: Subscriber, lastSeq: string): Promise<void> {
    const rows = await sessionsChangedSince(this.pool, lastSeq, CATCH_UP_LIMIT + 1, s.admin ? undefined : s.uid);
    if (rows.length > CATCH_UP_LIMIT) return s.resync();
    for (const r of rows) s.session(presentSession(r, s.admin), r.change_seq);
  }

  private async flush(): Promise<void> {
    this.timer = null;
    const sessionIds = [...this.sessionIds];
    const agentIds = [...this.agentIds];
    this.sessionIds = new Set();
    this.agentIds = new Set();
    try {
      const [sessions, agents] = await Promise.all([
        loadSessions(this.pool, sessionIds),
        agentIds.length ? loadAgents(this.pool, this.heartbeatTimeoutMs, agentIds) : Promise.resolve([]),
      ]);
      sessions.sort((a, b) => Number(a.change_seq ?? 0) - Number(b.change_seq ?? 0));
      for (const sub of this.subscribers) {
        for (const r of sessions) if (sub.admin || r.user_id === sub.uid) this.send(sub, r);
        if (sub.admin) for (const a of agents) sub.agent(a);
      }
    } catch (err) {
      this.log.warn('live events: cannot load changes; viewers resync', { error: (err as Error).message });
      for (const s of this.subscribers) s.resync();
    }
  }

  private send(sub: Subscriber, r: SessionRow): void {
    try {
      sub.session(presentSession(r, sub.admin), r.change_seq);
    } catch {
      // a closed stream; its close handler unsubscribes it
    }
  }
}
