/**
 * The agents' side of the gateway: authenticates agent sockets, registers agents, records
 * heartbeats, relays commands from the command log to the agent and the agent's answers back.
 */
import { randomUUID } from 'node:crypto';
import { IncomingMessage, STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Pool } from 'pg';
import WebSocket, { WebSocketServer } from 'ws';
import type { Logger } from '../../config/log';
import {
  CHANNEL_COMMAND_PENDING,
  CHANNEL_COMMAND_WITHDRAWN,
  claimForDelivery,
  ClaimedCommand,
  requeueCommand,
  expireOverdue,
  markAcked,
  markFinished,
  markProgress,
} from '../../db/commands';
import { PgListener } from '../../db/listener';
import {
  AgentMessage,
  CloseCode,
  ControlPlaneMessage,
  encode,
  MAX_CONTROL_FRAME_BYTES,
  parseAgentMessage,
  RegisterMessage,
  ReportedSession,
} from '../../protocol/messages';
import { AGENT_TOKEN_REVOKED_CHANNEL, AgentIdentity, authenticateAgent } from '../auth/agent-credentials';
import { bearer, TokenError, TokenService } from '../auth/tokens';
import type { Metrics } from '../metrics';
import { AgentConnection, AgentHub, heartbeatIntervalMs, livenessWriteIntervalMs } from './hub';
import { classifyReport, Divergence } from './reconcile';

/** Malformed frames tolerated (each answered with a reason) before the socket is closed. */
const MAX_BAD_FRAMES = 10;

/**
 * AGENT_HEARTBEAT_WRITE=per-beat: one UPDATE per heartbeat received (and one Redis command per
 * agent per location refresh), as before heartbeats were batched. A benchmark baseline only
 * (bench/idle-agents.ts); the default writes liveness in batches.
 */
export const perBeatHeartbeatWrites = (env: NodeJS.ProcessEnv = process.env): boolean => env.AGENT_HEARTBEAT_WRITE === 'per-beat';

/** What a pod knows of one local socket's heartbeats (monotonic clock) and what it last wrote. */
interface Beat {
  /** When its last heartbeat (or its registration) arrived. */
  at: number;
  activeSessions: number;
  /** `at` and `activeSessions` as last written to agents. */
  writtenAt: number;
  writtenActive: number;
}

export interface AgentGatewayOptions {
  pool: Pool;
  databaseUrl: string;
  hub: AgentHub;
  tokens: TokenService;
  heartbeatTimeoutMs: number;
  sweepIntervalMs: number;
  podId: string;
  log: Logger;
  metrics: Metrics;
  /** Hands what an agent's report shows to be wrong to the session workflows (api/agents/repair.ts). */
  onDivergence?: (agentDbId: string, agentId: string, divergences: Divergence[]) => Promise<void>;
  /** Unfinished commands this long past their deadline are failed by the sweep (default 2 s). */
  expiryGraceMs?: number;
}

export class AgentGateway {
  private readonly wss = new WebSocketServer({ noServer: true, maxPayload: MAX_CONTROL_FRAME_BYTES });
  private readonly listener: PgListener;
  private sweepTimer: NodeJS.Timeout | null = null;
  private livenessTimer: NodeJS.Timeout | null = null;
  /**
   * Heartbeats are kept here, per local socket, and written for all of this pod's agents in one
   * statement every livenessWriteIntervalMs (only the agents that beat since, or whose session
   * count changed): database work per pod and interval, not per agent and beat.
   */
  private readonly beats = new Map<AgentConnection, Beat>();
  private livenessWriting = false;
  private readonly perBeat = perBeatHeartbeatWrites();
  private readonly flushing = new Map<string, Promise<void>>();

  constructor(private readonly o: AgentGatewayOptions) {
    this.listener = new PgListener(o.databaseUrl, [CHANNEL_COMMAND_PENDING, CHANNEL_COMMAND_WITHDRAWN, AGENT_TOKEN_REVOKED_CHANNEL], o.log);
    this.listener.on('notification', (channel: string, payload: string) => {
      if (channel === CHANNEL_COMMAND_PENDING && o.hub.local(payload)) this.flush(payload, false);
      if (channel === CHANNEL_COMMAND_WITHDRAWN) {
        // Only the pod holding the agent's socket tells it; an agent not connected learns it
        // when it reports the command's result (answered with cancel_command) or never ran it.
        const [agentDbId, commandId, sessionId] = payload.split(' ');
        this.o.hub
          .local(agentDbId)
          ?.send({ type: 'cancel_command', command_id: commandId, session_id: sessionId, reason: 'withdrawn: the workflow no longer waits for it' });
      }
      // Every pod LISTENs: whichever holds a socket using the revoked token closes it.
      if (channel === AGENT_TOKEN_REVOKED_CHANNEL) this.closeForTokens([payload], 'agent token revoked');
    });
    // After a lost LISTEN connection, catch up on whatever was queued meanwhile.
    this.listener.on('reconnected', () => this.flushAll().catch((err) => this.o.log.warn('catch-up delivery failed', { error: (err as Error).message })));
  }

  async start(): Promise<void> {
    await this.listener.start();
    this.sweepTimer = setInterval(() => void this.sweep(), this.o.sweepIntervalMs);
    this.sweepTimer.unref();
    this.livenessTimer = setInterval(() => void this.writeLiveness(), livenessWriteIntervalMs(this.o.heartbeatTimeoutMs));
    this.livenessTimer.unref();
  }

  async close(): Promise<void> {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    if (this.livenessTimer) clearInterval(this.livenessTimer);
    for (const conn of this.o.hub.localConnections()) conn.close(CloseCode.ShuttingDown, 'control plane shutting down');
    await this.listener.close();
  }

  /**
   * Called for upgrade requests on the agent path: authenticate before any frame is read. The
   * token must be signed and have a live agent_tokens record (not revoked, not expired).
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const token = bearer(req.headers.authorization);
    const refuse = (err: unknown) => {
      this.o.metrics.agentAuthFailures.inc();
      const reason = err instanceof TokenError ? err.message : 'credentials cannot be checked now, retry later';
      if (!(err instanceof TokenError)) this.o.log.error('agent authentication failed', { error: (err as Error).message });
      else this.o.log.warn('agent refused', { reason });
      rejectUpgrade(socket, err instanceof TokenError ? 401 : 503, `agent authentication failed: ${reason}`);
    };
    if (!token) return refuse(new TokenError('missing agent token (Authorization: Bearer <AGENT_TOKEN>)'));
    authenticateAgent(this.o.pool, this.o.tokens, token).then((identity) => {
      if (socket.destroyed) return;
      this.wss.handleUpgrade(req, socket, head, (ws) => this.onSocket(ws, identity));
    }, refuse);
  }

  /** Closes this pod's agent sockets that authenticated with one of these tokens. */
  private closeForTokens(tokenIds: string[], reason: string): void {
    const dead = new Set(tokenIds);
    for (const conn of this.o.hub.localConnections()) {
      if (conn.tokenId && dead.has(conn.tokenId)) {
        this.o.log.warn('closing agent socket: its token is no longer valid', { agent: conn.agentId, token_id: conn.tokenId, reason });
        conn.close(CloseCode.Unauthorized, reason);
      }
    }
    for (const [ws, tokenId] of this.pendingSockets) if (dead.has(tokenId)) ws.close(CloseCode.Unauthorized, reason);
  }

  /** Sockets authenticated but not registered yet (their token may be revoked meanwhile). */
  private readonly pendingSockets = new Map<WebSocket, string>();

  private onSocket(ws: WebSocket, identity: AgentIdentity): void {
    const tokenAgentId = identity.agentId;
    this.pendingSockets.set(ws, identity.tokenId);
    const connId = randomUUID();
    const log = this.o.log;
    let conn: AgentConnection | null = null;
    let badFrames = 0;

    const send = (msg: ControlPlaneMessage): boolean => {
      if (ws.readyState !== WebSocket.OPEN) return false;
      ws.send(encode(msg));
      return true;
    };
    const refuse = (reason: string, fatal: boolean, code: number = CloseCode.ProtocolError) => {
      send({ type: 'error', reason, fatal });
      if (fatal) ws.close(code, reason.slice(0, 120));
    };

    // Until the agent registers, nothing else it says is accepted.
    const registerTimer = setTimeout(() => refuse('no register message within 10s', true), 10_000);

    ws.on('message', (data, isBinary) => {
      const parsed = isBinary ? { ok: false as const, reason: 'binary frames are not allowed on the control socket' } : parseAgentMessage(data);
      if (!parsed.ok) {
        this.o.metrics.agentProtocolErrors.inc();
        log.warn('malformed agent frame', { agent: tokenAgentId, reason: parsed.reason });
        refuse(parsed.reason, ++badFrames >= MAX_BAD_FRAMES);
        return;
      }
      const msg = parsed.value;
      if (!conn) {
        if (msg.type !== 'register') return refuse(`send register before ${msg.type}`, true);
        if (msg.agent_id !== tokenAgentId) return refuse(`token is for agent "${tokenAgentId}", not "${msg.agent_id}"`, true, CloseCode.Unauthorized);
        clearTimeout(registerTimer);
        ws.pause();
        this.register(msg, connId, identity.tokenId, send, ws)
          .then((c) => {
            conn = c;
            this.pendingSockets.delete(ws);
            ws.resume();
          })
          .catch((err) => {
            // Read again, or the agent's answer to the close frame is never seen (a 30 s close timeout).
            ws.resume();
            if (err instanceof StaleLeaderError) {
              log.warn('agent registration refused', { agent: msg.agent_id, reason: err.message });
              return refuse(err.message, true, CloseCode.Replaced);
            }
            log.error('agent registration failed', { agent: msg.agent_id, error: (err as Error).message });
            refuse('registration failed, retry later', true, 1011);
          });
        return;
      }
      this.onAgentMessage(conn, msg).catch((err) =>
        log.error('handling agent message failed', { agent: conn?.agentId, type: msg.type, error: (err as Error).message }),
      );
    });

    ws.on('close', () => {
      clearTimeout(registerTimer);
      this.pendingSockets.delete(ws);
      if (conn) void this.unregister(conn);
    });
    ws.on('error', (err) => log.warn('agent socket error', { agent: tokenAgentId, error: err.message }));
  }

  private async register(
    msg: RegisterMessage,
    connId: string,
    tokenId: string,
    send: (m: ControlPlaneMessage) => boolean,
    ws: WebSocket,
  ): Promise<AgentConnection> {
    const capacity = { ...msg.capacity };
    const r = await this.o.pool.query<{ id: string }>(
      `INSERT INTO agents (agent_id, platform, region, status, capacity, metadata, websocket_conn_id, last_heartbeat, cluster_id, active_sessions)
       VALUES ($1, $2, $3, 'online', $4, $5, $6, NOW(), $7, $8)
       ON CONFLICT (agent_id) DO UPDATE
         SET platform = EXCLUDED.platform, region = EXCLUDED.region, status = 'online', capacity = EXCLUDED.capacity,
             metadata = EXCLUDED.metadata, websocket_conn_id = EXCLUDED.websocket_conn_id, last_heartbeat = NOW(),
             cluster_id = EXCLUDED.cluster_id, active_sessions = EXCLUDED.active_sessions
         -- HA (Docker agent): a replica whose lease is older than the registered leader's is refused.
         WHERE CASE WHEN jsonb_typeof(agents.metadata->'ha_fencing_token') = 'number' AND jsonb_typeof(EXCLUDED.metadata->'ha_fencing_token') = 'number'
                    THEN (EXCLUDED.metadata->>'ha_fencing_token')::numeric >= (agents.metadata->>'ha_fencing_token')::numeric ELSE true END
       RETURNING id`,
      [
        msg.agent_id,
        msg.platform,
        msg.region ?? null,
        capacity,
        { ...(msg.metadata ?? {}), pod_id: this.o.podId, protocol_version: msg.protocol_version },
        connId,
        msg.cluster_id ?? null,
        msg.sessions.filter((s) => s.state === 'running' || s.state === 'starting').length,
      ],
    );
    if (!r.rows[0]) throw new StaleLeaderError(msg.agent_id, msg.metadata?.ha_fencing_token);
    const agentDbId = r.rows[0].id;
    await this.o.pool.query(
      `INSERT INTO redis_agent_connections (agent_id, pod_id, websocket_conn_id) VALUES ($1, $2, $3)
       ON CONFLICT (agent_id, websocket_conn_id) DO NOTHING`,
      [msg.agent_id, this.o.podId, connId],
    );
    const conn: AgentConnection = {
      agentId: msg.agent_id,
      agentDbId,
      platform: msg.platform,
      connId,
      tokenId,
      send,
      close: (code, reason) => ws.close(code, reason),
    };
    const registeredAt = performance.now();
    const active = msg.sessions.filter((s) => s.state === 'running' || s.state === 'starting').length;
    this.beats.set(conn, { at: registeredAt, activeSessions: active, writtenAt: registeredAt, writtenActive: active });
    if (ws.readyState !== WebSocket.OPEN) this.beats.delete(conn); // closed while registering: 'close' has been handled already
    const replaced = await this.o.hub.attach(conn);
    replaced?.close(CloseCode.Replaced, 'replaced by a newer connection of the same agent');
    send({ type: 'registered', conn_id: connId, heartbeat_interval_ms: heartbeatIntervalMs(this.o.heartbeatTimeoutMs), server_time_ms: Date.now() });
    this.o.log.info('Agent registered', { agent: msg.agent_id, platform: msg.platform, sessions: msg.sessions.length, conn: connId });
    await this.reconcile(agentDbId, msg.agent_id, msg.sessions);
    // Everything not yet finished is (re)delivered: the agent de-duplicates by command id.
    this.flush(agentDbId, true);
    return conn;
  }

  /**
   * Compares what the agent really runs with each session's desired state, records it where
   * operators see it (agent metadata, session platform_metadata), and hands every divergence to
   * the session workflows, which decide the repair (remove, restart, hibernate again, fail).
   */
  private async reconcile(agentDbId: string, agentId: string, reported: ReportedSession[]): Promise<void> {
    const rows = await this.o.pool.query<{ id: string; state: string; agent_id: string | null; workflow_id: string | null }>(
      `SELECT id, state, agent_id, workflow_id FROM sessions
        WHERE (agent_id = $1 AND state NOT IN ('terminated', 'deleted')) OR id = ANY($2::text[])`,
      [agentDbId, reported.map((s) => s.session_id)],
    );
    const divergences = classifyReport(agentDbId, rows.rows, reported);
    const observed = new Map(reported.map((r) => [r.session_id, r.state]));
    await this.o.pool.query(
      `UPDATE sessions s SET platform_metadata = COALESCE(s.platform_metadata, '{}'::jsonb) || jsonb_build_object('observed_state', o.observed, 'observed_at', NOW())
         FROM unnest($1::text[], $2::text[]) AS o(id, observed)
        WHERE s.id = o.id AND s.agent_id = $3`,
      [rows.rows.map((r) => r.id), rows.rows.map((r) => observed.get(r.id) ?? 'missing'), agentDbId],
    );
    const of = (kind: Divergence['kind']) => divergences.filter((d) => d.kind === kind).map((d) => d.sessionId);
    await this.o.pool.query(
      `UPDATE agents SET metadata = COALESCE(metadata, '{}'::jsonb) || jsonb_build_object('missing_sessions', $2::jsonb, 'orphan_sessions', $3::jsonb)
        WHERE id = $1`,
      [agentDbId, JSON.stringify(of('missing')), JSON.stringify(of('orphan'))],
    );
    if (!divergences.length) return;
    for (const d of divergences) this.o.metrics.reconcileReports?.inc({ kind: d.kind });
    this.o.log.warn("agent report differs from the sessions' desired state; asking their workflows to repair", {
      agent: agentId,
      divergences: divergences.slice(0, 20).map((d) => `${d.sessionId}: ${d.kind} (desired ${d.desired}, observed ${d.observed})`),
      total: divergences.length,
    });
    // Not awaited: the agent's socket stays paused until registration ends, and handing thousands
    // of divergences to Temporal must not hold its heartbeats and results back.
    void this.o
      .onDivergence?.(agentDbId, agentId, divergences)
      .catch((err) => this.o.log.warn('reconcile hand-over failed (the next registration retries)', { agent: agentId, error: (err as Error).message }));
  }

  private async unregister(conn: AgentConnection): Promise<void> {
    this.beats.delete(conn);
    const wasCurrent = await this.o.hub.detach(conn);
    await this.o.pool
      .query('DELETE FROM redis_agent_connections WHERE agent_id = $1 AND websocket_conn_id = $2', [conn.agentId, conn.connId])
      .catch(() => undefined);
    if (!wasCurrent) return;
    await this.o.pool
      .query(`UPDATE agents SET status = 'offline', websocket_conn_id = NULL WHERE id = $1 AND websocket_conn_id = $2`, [conn.agentDbId, conn.connId])
      .catch((err) => this.o.log.warn('cannot mark agent offline', { error: (err as Error).message }));
    this.o.log.info('Agent disconnected', { agent: conn.agentId, conn: conn.connId });
  }

  private async onAgentMessage(conn: AgentConnection, msg: AgentMessage): Promise<void> {
    const pool = this.o.pool;
    switch (msg.type) {
      case 'heartbeat': {
        const beat = this.beats.get(conn);
        if (!beat) return;
        beat.at = performance.now();
        beat.activeSessions = msg.active_sessions;
        if (!this.perBeat) return; // written with the pod's next batch (writeLiveness)
        beat.writtenAt = beat.at;
        beat.writtenActive = beat.activeSessions;
        await pool.query(
          `UPDATE agents SET last_heartbeat = NOW(), status = 'online', active_sessions = $3
            WHERE id = $1 AND websocket_conn_id = $2`,
          [conn.agentDbId, conn.connId, msg.active_sessions],
        );
        return;
      }
      case 'ack':
        await markAcked(pool, msg.command_id, conn.agentDbId);
        return;
      case 'progress':
        await markProgress(pool, msg.command_id, conn.agentDbId, msg.message);
        return;
      case 'completed':
      case 'failed': {
        // Written durably first, acknowledged after: a database error leaves the result
        // unacknowledged and the agent sends it again.
        const outcome =
          msg.type === 'completed' ? { ok: true as const, result: msg.result } : { ok: false as const, error: msg.error, retryable: msg.retryable };
        const done = await markFinished(pool, msg.command_id, conn.agentDbId, outcome);
        conn.send({ type: 'result_ack', command_id: msg.command_id });
        this.o.metrics.resultAcks?.inc({ outcome: done.kind });
        if (done.kind === 'recorded') {
          this.o.metrics.commandsFinished.inc({ outcome: msg.type });
          this.o.metrics.commandRoundTrip?.observe(
            { platform: conn.platform ?? 'unknown', type: done.commandType, outcome: msg.type },
            (Date.now() - done.createdAt.getTime()) / 1000,
          );
        } else if (done.kind === 'withdrawn' && msg.type === 'completed') {
          // It ran after its workflow gave up on it: the agent undoes it.
          conn.send({ type: 'cancel_command', command_id: msg.command_id, session_id: done.sessionId!, reason: 'completed after it was withdrawn' });
        }
        return;
      }
      case 'stream_error':
        this.streamErrorHandler?.(msg.stream_id, msg.error);
        return;
      case 'register':
        conn.send({ type: 'error', reason: 'already registered', fatal: false });
        return;
    }
  }

  /** Set by the VNC tunnel to learn that an agent could not open a stream. */
  streamErrorHandler: ((streamId: string, error: string) => void) | null = null;

  /** Whether this pod holds the agent's control socket. */
  holds(agentDbId: string): boolean {
    return this.o.hub.local(agentDbId) !== undefined;
  }

  /**
   * Sends a command this pod committed as already sent (issueCommand's sendNow: it held the
   * agent's socket then). If the socket is gone or will not take the frame, the command goes back
   * to pending with a NOTIFY, and whichever pod holds the agent now delivers it.
   */
  sendIssued(row: ClaimedCommand): void {
    const conn = this.o.hub.local(row.agent_id);
    if (conn && this.deliver(conn, row)) return;
    requeueCommand(this.o.pool, row.id, row.agent_id, false).catch((err: Error) =>
      // Left as sent: the agent gets it when it next registers (sent commands are redelivered then), else its deadline ends it.
      this.o.log.warn('command not sent and not put back to pending', { command: row.id, error: err.message }),
    );
  }

  /** Sends the agent its queued commands; one flush per agent at a time, re-run if asked again. */
  private flush(agentDbId: string, redeliver: boolean): void {
    const prev = this.flushing.get(agentDbId) ?? Promise.resolve();
    const next = prev
      .then(async () => {
        const conn = this.o.hub.local(agentDbId);
        if (!conn) return;
        const rows = await claimForDelivery(this.o.pool, agentDbId, redeliver);
        for (const row of rows) this.deliver(conn, row);
      })
      .catch((err) => this.o.log.warn('command delivery failed; will retry', { error: (err as Error).message }))
      .finally(() => {
        if (this.flushing.get(agentDbId) === next) this.flushing.delete(agentDbId);
      });
    this.flushing.set(agentDbId, next);
  }

  /** Whether the socket took the frame. */
  private deliver(conn: AgentConnection, row: ClaimedCommand): boolean {
    const ok = conn.send({
      type: 'command',
      command_id: row.id,
      command_type: row.command_type,
      session_id: row.session_id,
      generation: row.generation ?? 0,
      expires_in_ms: row.expires_in_ms,
      ...(row.expires_at ? { expires_at_ms: row.expires_at.getTime() } : {}),
      data: row.command_data ?? {},
    });
    if (!ok) return false;
    this.o.metrics.commandsSent.inc({ type: row.command_type });
    if (row.redelivery) this.o.metrics.commandRedeliveries?.inc({ type: row.command_type });
    return true;
  }

  /**
   * Every livenessWriteIntervalMs: closes the local sockets silent for the heartbeat timeout, and
   * writes, in ONE statement, the last heartbeat (its own time, on the database's clock) and session
   * count of the local agents that beat (or changed) since the last write. Nothing is written when
   * nothing beat. An agent that falls silent keeps its last real beat in agents.last_heartbeat, so
   * every pod's sweep, placement and the console see it age as before.
   */
  private async writeLiveness(): Promise<void> {
    const now = performance.now();
    for (const [conn, beat] of this.beats) {
      if (now - beat.at <= this.o.heartbeatTimeoutMs) continue;
      this.beats.delete(conn);
      this.o.log.warn('agent missed its heartbeats; closing its socket', { agent: conn.agentId, silent_ms: Math.round(now - beat.at) });
      conn.close(CloseCode.HeartbeatTimeout, 'heartbeat timeout');
    }
    if (this.livenessWriting) return;
    const due = [...this.beats].filter(([, b]) => b.at > b.writtenAt || b.activeSessions !== b.writtenActive);
    if (!due.length) return;
    const batch = due.map(([conn, b]) => ({ conn, b, at: b.at, active: b.activeSessions }));
    this.livenessWriting = true;
    try {
      const t = performance.now();
      await this.o.pool.query(
        // Rows locked in id order, as placement locks them: a batch and a placement never deadlock.
        `WITH h AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::int[]) AS h(id, conn_id, age_ms, active)),
              locked AS (SELECT a.id FROM agents a JOIN h ON a.id = h.id AND a.websocket_conn_id = h.conn_id ORDER BY a.id FOR NO KEY UPDATE OF a)
         UPDATE agents a SET last_heartbeat = NOW() - (h.age_ms * INTERVAL '1 millisecond'), status = 'online', active_sessions = h.active
           FROM h JOIN locked l ON l.id = h.id
          WHERE a.id = h.id AND a.websocket_conn_id = h.conn_id`,
        [batch.map((x) => x.conn.agentDbId), batch.map((x) => x.conn.connId), batch.map((x) => Math.max(0, Math.round(t - x.at))), batch.map((x) => x.active)],
      );
      for (const x of batch) {
        x.b.writtenAt = Math.max(x.b.writtenAt, x.at);
        x.b.writtenActive = x.active;
      }
      this.o.metrics.heartbeatBatches?.inc();
      this.o.metrics.heartbeatsWritten?.inc(batch.length);
    } catch (err) {
      // Kept in memory: the next write carries them.
      this.o.log.warn('cannot record agent heartbeats; retrying with the next batch', { agents: batch.length, error: (err as Error).message });
    } finally {
      this.livenessWriting = false;
    }
  }

  /** Flushes every local agent that has queued commands (one query, not one per agent). */
  private async flushAll(): Promise<void> {
    const local = this.o.hub.localConnections().map((c) => c.agentDbId);
    if (!local.length) return;
    const r = await this.o.pool.query<{ agent_id: string }>(
      `SELECT DISTINCT agent_id FROM agent_commands WHERE status = 'pending' AND agent_id = ANY($1::uuid[])`,
      [local],
    );
    for (const row of r.rows) this.flush(row.agent_id, false);
  }

  /**
   * Safety net: deliver anything a missed NOTIFY left queued, fail commands past their deadline,
   * and retire silent agents. Any pod may flag an agent offline (placement then skips it), but
   * only the pod holding its socket closes it, and the agent's next heartbeat on that socket sets
   * it online again (the connection id is never cleared behind the socket holder's back).
   */
  private async sweep(): Promise<void> {
    try {
      // One statement, whatever the agent count: retire agents whose recorded beat is older than
      // the timeout (any pod's), find this pod's agents with queued commands a missed NOTIFY left
      // behind, and the tokens of its sockets that expired or were revoked while a NOTIFY was
      // missed (the rule of deadAgentTokens in api/auth/agent-credentials.ts).
      const tokenIds = [...new Set([...this.o.hub.localConnections().map((c) => c.tokenId), ...this.pendingSockets.values()])].filter((t): t is string => !!t);
      const r = await this.o.pool.query<{ kind: 'stale' | 'pending' | 'dead_token'; id: string; agent_id: string | null }>(
        `WITH stale AS (
           UPDATE agents SET status = 'offline'
            WHERE status = 'online' AND last_heartbeat < NOW() - ($1::int * INTERVAL '1 millisecond')
            RETURNING id, agent_id)
         SELECT 'stale' AS kind, id::text AS id, agent_id FROM stale
         UNION ALL
         SELECT 'pending', p.agent_id::text, NULL FROM (SELECT DISTINCT agent_id FROM agent_commands WHERE status = 'pending' AND agent_id = ANY($2::uuid[])) p
         UNION ALL
         SELECT 'dead_token', t.id::text, NULL FROM unnest($3::uuid[]) AS t(id)
          WHERE NOT EXISTS (SELECT 1 FROM agent_tokens k WHERE k.id = t.id AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > NOW()))`,
        [this.o.heartbeatTimeoutMs, this.o.hub.localConnections().map((c) => c.agentDbId), tokenIds],
      );
      const dead: string[] = [];
      for (const a of r.rows) {
        if (a.kind === 'stale') this.o.log.warn('agent missed its heartbeats; marked offline', { agent: a.agent_id });
        else if (a.kind === 'pending') this.flush(a.id, false);
        else dead.push(a.id);
      }
      if (dead.length) this.closeForTokens(dead, 'agent token revoked or expired');
      const expired = await expireOverdue(this.o.pool, this.o.expiryGraceMs ?? 2000);
      for (const c of expired) this.o.metrics.commandsExpired?.inc({ type: c.command_type });
      if (expired.length) this.o.log.warn('commands expired before they finished', { count: expired.length, ids: expired.slice(0, 10).map((c) => c.id) });
      // This pod's silent sockets are closed by writeLiveness, from the beats it holds in memory.
    } catch (err) {
      this.o.log.warn('agent sweep failed', { error: (err as Error).message });
    }
  }
}

/** An HA replica registered with a fencing token older than the one its agent already registered with. */
class StaleLeaderError extends Error {
  constructor(agentId: string, token: unknown) {
    super(`agent ${agentId}: a newer HA leader has registered (this replica's fencing token ${String(token)} is older); not the leader`);
  }
}

/** Answers an upgrade request with a plain HTTP error and a JSON reason, then closes it. */
export function rejectUpgrade(socket: Duplex, status: number, reason: string): void {
  const text = STATUS_CODES[status] ?? 'Error';
  const body = JSON.stringify({ statusCode: status, error: text, message: reason });
  socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}
