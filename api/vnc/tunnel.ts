/**
 * Gateway side of the VNC tunnel: browser ⇄ gateway ⇄ agent ⇄ session VNC port.
 *
 * 1. The browser redeems a single-use ticket on /api/v1/sessions/<id>/vnc (checked before any
 *    byte reaches an agent).
 * 2. The gateway asks the session's agent (over its control socket, via the AgentHub) to open a
 *    stream; the agent dials a dedicated stream socket back to AGENT_STREAM_PATH?stream_id=…
 *    (its own TCP connection: VNC bytes never queue behind commands or heartbeats).
 * 3. The two sockets are relayed (protocol/relay.ts): backpressure end to end, and a close or
 *    error on either side closes the other. Idle tunnels close after VNC_PROXY_TIMEOUT.
 *
 * Multi-pod: the open_stream request travels through the AgentHub (Redis backend: to the pod that
 * holds the agent's control socket), so browser and agent control socket may be on any pods. The
 * stream socket goes where AGENT_STREAM_URL says (unset: CONTROL_PLANE_URL's origin): either this
 * pod's own address (e.g. ws://<pod-ip>:8081, in-cluster agents: it lands here), or the Ingress
 * (agents outside the cluster: it lands on any pod, which hands it to this one, pod-hop.ts).
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Pool } from 'pg';
import WebSocket, { WebSocketServer } from 'ws';
import type { Logger } from '../../config/log';
import { AGENT_STREAM_PATH } from '../../protocol/messages';
import { relayWebSockets } from '../../protocol/relay';
import type { InputTracker } from '../sessions/input-tracker';
import { RfbInputScanner } from './rfb-input';
import { rejectUpgrade } from '../agents/gateway';
import type { AgentHub } from '../agents/hub';
import { authenticateAgent } from '../auth/agent-credentials';
import { bearer, TokenError, TokenService } from '../auth/tokens';
import type { Metrics } from '../metrics';
import type { PodHandoff } from './pod-hop';

export const VIEWER_SOCKET_PATH = /^\/api\/v1\/sessions\/([^/]+)\/vnc$/;

export interface VncTunnelOptions {
  pool: Pool;
  hub: AgentHub;
  tokens: TokenService;
  metrics: Metrics;
  log: Logger;
  idleTimeoutMs: number;
  ticketTtlMs: number;
  /** How long the agent has to dial its stream socket back. */
  openTimeoutMs: number;
  /** Absolute base URL agents dial for streams (this pod, or the Ingress); relative path when unset. */
  agentStreamUrl: string | null;
  /** Hands stream sockets that land on the wrong pod to the right one (Redis hub only). */
  handoff?: PodHandoff | null;
  /** Records the viewer's keyboard/mouse input per session (idle hibernation). */
  input?: InputTracker;
}

interface PendingStream {
  agentId: string;
  resolve: (ws: WebSocket) => void;
  reject: (err: Error) => void;
}

const hashTicket = (t: string) => createHash('sha256').update(t).digest('hex');

export class VncTunnel {
  private readonly wss = new WebSocketServer({
    noServer: true,
    perMessageDeflate: false,
    // noVNC offers "binary" on some versions; answer with it when offered.
    handleProtocols: (protocols) => (protocols.has('binary') ? 'binary' : false),
  });
  private readonly pending = new Map<string, PendingStream>();
  private readonly open = new Set<WebSocket>();
  /** Per-tunnel byte counts, added to the metrics once a second (not per message). */
  private readonly byteCounters = new Set<{ toSession: number; toViewer: number }>();
  private readonly flushTimer = setInterval(() => this.flushBytes(), 1000).unref();

  private flushBytes(): void {
    for (const c of this.byteCounters) {
      if (c.toSession) this.o.metrics.vncBytes.inc({ direction: 'to_session' }, c.toSession);
      if (c.toViewer) this.o.metrics.vncBytes.inc({ direction: 'to_viewer' }, c.toViewer);
      c.toSession = c.toViewer = 0;
    }
  }

  constructor(private readonly o: VncTunnelOptions) {}

  get activeTunnels(): number {
    return this.open.size / 2;
  }

  /** Issues a single-use ticket for one viewer connection (caller has checked ownership). */
  async issueTicket(sessionId: string, username: string): Promise<{ ticket: string; expiresIn: number }> {
    const ticket = randomBytes(24).toString('base64url');
    await this.o.pool.query(`DELETE FROM vnc_tickets WHERE expires_at < NOW()`);
    await this.o.pool.query(
      `INSERT INTO vnc_tickets (ticket_hash, session_id, username, expires_at)
       VALUES ($1, $2, $3, NOW() + ($4::int * INTERVAL '1 millisecond'))`,
      [hashTicket(ticket), sessionId, username, this.o.ticketTtlMs],
    );
    return { ticket, expiresIn: Math.ceil(this.o.ticketTtlMs / 1000) };
  }

  /** Browser side: redeem the ticket, open a stream through the agent, then accept the socket. */
  async handleViewerUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer, sessionId: string): Promise<void> {
    const fail = (status: number, reason: string) => {
      this.o.metrics.vncConnectionFailures.inc({ reason: status === 401 || status === 403 ? 'unauthorized' : 'unavailable' });
      rejectUpgrade(socket, status, reason);
    };
    const ticket = new URL(req.url ?? '/', 'http://x').searchParams.get('ticket');
    if (!ticket) return fail(401, 'missing ticket (POST /api/v1/sessions/<id>/vnc-ticket first)');
    // Atomic redeem: a ticket works once, before it expires, for its own session only.
    const redeemed = await this.o.pool.query<{ username: string }>(
      `DELETE FROM vnc_tickets WHERE ticket_hash = $1 RETURNING username, session_id, expires_at > NOW() AS valid`,
      [hashTicket(ticket)],
    );
    const t = redeemed.rows[0] as { username: string; session_id: string; valid: boolean } | undefined;
    if (!t || !t.valid || t.session_id !== sessionId) return fail(401, 'invalid, expired or already used ticket');

    const s = await this.o.pool.query<{ state: string; agent_db_id: string | null; agent_id: string | null }>(
      `SELECT s.state, s.agent_id AS agent_db_id, a.agent_id FROM sessions s LEFT JOIN agents a ON a.id = s.agent_id WHERE s.id = $1`,
      [sessionId],
    );
    const session = s.rows[0];
    if (!session || session.state !== 'running' || !session.agent_db_id || !session.agent_id)
      return fail(409, `session is ${session?.state ?? 'gone'}: nothing to view`);

    let agentWs: WebSocket;
    try {
      agentWs = await this.openAgentStream(session.agent_db_id, session.agent_id, sessionId, socket);
    } catch (err) {
      return fail(502, (err as Error).message);
    }
    if (socket.destroyed) {
      agentWs.close(1001, 'viewer went away');
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (browserWs) => {
      this.o.metrics.vncConnections.inc();
      this.o.log.debug('VNC tunnel open', { session: sessionId, user: t.username });
      this.join(browserWs, agentWs, sessionId);
    });
  }

  /** Agent side: the agent dials back with its stream socket. */
  async handleAgentStreamUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> {
    const query = new URL(req.url ?? '/', 'http://x').searchParams;
    const streamId = query.get('stream_id') ?? '';
    let agentId: string;
    try {
      // The token's record, not its signature alone: a revoked or expired agent token attaches nothing.
      agentId = (await authenticateAgent(this.o.pool, this.o.tokens, bearer(req.headers.authorization) ?? '')).agentId;
    } catch (err) {
      return rejectUpgrade(socket, 401, `agent authentication failed: ${err instanceof TokenError ? err.message : 'invalid token'}`);
    }
    const error = query.get('error');
    // Not waited for here: behind an Ingress the stream may have landed on another pod than the
    // viewer's; that pod (if any) gets it through a hop.
    if (!this.pending.has(streamId) && this.o.handoff && (await this.o.handoff.forward(req, socket, head, streamId, agentId, error))) return;
    this.attachStream(req, socket, head, streamId, agentId, error);
  }

  /** Owner side of a hand-off: another pod relays a stream socket that landed there. */
  handlePodHopUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const handoff = this.o.handoff;
    if (!handoff) return rejectUpgrade(socket, 404, 'no pod hand-off here (AGENT_HUB_BACKEND=redis only)');
    const hop = handoff.verifyHop(req);
    if ('status' in hop) return rejectUpgrade(socket, hop.status, hop.reason);
    if (this.attachStream(req, socket, head, hop.streamId, hop.agentId, hop.error) && !hop.error) handoff.accepted();
  }

  /** Joins a stream socket (the agent's, or a hop carrying it) to the viewer waiting for it; true when it was. */
  private attachStream(req: IncomingMessage, socket: Duplex, head: Buffer, streamId: string, agentId: string, error: string | null): boolean {
    const p = this.pending.get(streamId);
    if (!p) {
      rejectUpgrade(socket, 404, 'no such stream (expired or already connected)');
      return false;
    }
    if (p.agentId !== agentId) {
      rejectUpgrade(socket, 403, 'this stream belongs to another agent');
      return false;
    }
    // The agent reports a failure here too: this is the pod that waits for the stream, which
    // need not be the pod holding the agent's control socket.
    if (error) {
      this.streamFailed(streamId, error.slice(0, 1000));
      rejectUpgrade(socket, 410, 'stream failure recorded');
      return true;
    }
    this.pending.delete(streamId);
    this.wss.handleUpgrade(req, socket, head, (ws) => p.resolve(ws));
    return true;
  }

  /** An agent could not reach the session's VNC server. */
  streamFailed(streamId: string, error: string): void {
    const p = this.pending.get(streamId);
    if (!p) return;
    this.pending.delete(streamId);
    p.reject(new Error(`agent could not open the VNC stream: ${error}`));
  }

  private openAgentStream(agentDbId: string, agentId: string, sessionId: string, viewer: Duplex): Promise<WebSocket> {
    const streamId = randomUUID();
    return new Promise<WebSocket>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(streamId);
        this.o.handoff?.unregister(streamId);
        reject(new Error(`agent ${agentId} did not open the stream within ${this.o.openTimeoutMs} ms`));
      }, this.o.openTimeoutMs);
      const settle =
        <T>(fn: (v: T) => void) =>
        (v: T) => {
          clearTimeout(timer);
          viewer.off('close', onViewerGone);
          this.o.handoff?.unregister(streamId);
          fn(v);
        };
      const onViewerGone = () => {
        const p = this.pending.get(streamId);
        this.pending.delete(streamId);
        p?.reject(new Error('viewer went away'));
      };
      viewer.once('close', onViewerGone);
      this.pending.set(streamId, { agentId, resolve: settle(resolve), reject: settle(reject) });
      const path = `${AGENT_STREAM_PATH}?stream_id=${streamId}`;
      const url = this.o.agentStreamUrl ? new URL(path, this.o.agentStreamUrl).toString() : path;
      // Recorded for the other pods before the agent is asked: its stream may land on any of them.
      const recorded = this.o.handoff ? this.o.handoff.register(streamId, agentId) : Promise.resolve();
      recorded
        .then(() => {
          if (!this.pending.has(streamId)) return false; // the viewer went away meanwhile
          return this.o.hub.sendToAgent(agentDbId, { type: 'open_stream', stream_id: streamId, session_id: sessionId, url });
        })
        .then(
          (sent) => {
            if (!sent) this.streamFailed(streamId, `agent ${agentId} is not connected`);
          },
          (err: Error) => this.streamFailed(streamId, err.message),
        );
    });
  }

  private join(browserWs: WebSocket, agentWs: WebSocket, sessionId: string): void {
    const m = this.o.metrics;
    this.open.add(browserWs);
    this.open.add(agentWs);
    m.vncActiveTunnels.inc();
    const bytes = { toSession: 0, toViewer: 0 };
    this.byteCounters.add(bytes);
    const input = this.o.input;
    relayTunnel(browserWs, agentWs, {
      idleTimeoutMs: this.o.idleTimeoutMs,
      bytes,
      onInput: input ? () => input.input(sessionId) : undefined,
      onClose: () => {
        this.open.delete(browserWs);
        this.open.delete(agentWs);
        m.vncActiveTunnels.dec();
        this.flushBytes();
        this.byteCounters.delete(bytes);
      },
    });
  }

  close(): void {
    clearInterval(this.flushTimer);
    this.o.handoff?.close();
    for (const ws of this.open) ws.terminate();
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      p.reject(new Error('gateway shutting down'));
    }
  }
}

export interface TunnelOptions {
  /** The tunnel closes after this long without a byte either way. */
  idleTimeoutMs: number;
  /** Byte counts, added to by the relay (the caller flushes them to the metrics). */
  bytes: { toSession: number; toViewer: number };
  /** The viewer sent keyboard/mouse input (at most once per chunk); absent: the viewer's bytes are not scanned. */
  onInput?: () => void;
  /** Once, when both sockets are done. */
  onClose?: () => void;
}

/**
 * The per-tunnel hot path, joining a viewer socket and a stream socket (the agent's, or a pod hop
 * carrying it): byte counts, the idle timeout and the input scan, on top of relayWebSockets.
 * Nothing here runs per byte but the input scan of the (small) viewer → session direction; the
 * idle check reads a flag on a timer instead of the clock per message.
 */
export function relayTunnel(viewer: WebSocket, stream: WebSocket, o: TunnelOptions): () => void {
  for (const ws of [viewer, stream]) (ws as unknown as { _socket?: { setNoDelay(v: boolean): void } })._socket?.setNoDelay(true);
  const bytes = o.bytes;
  let active = false;
  let quietMs = 0;
  // Checked a few times per timeout: at most idleTimeoutMs / 4 late.
  const step = Math.max(25, Math.ceil(o.idleTimeoutMs / 4));
  const idle = setInterval(() => {
    if (active) {
      active = false;
      quietMs = 0;
    } else if ((quietMs += step) >= o.idleTimeoutMs) stop();
  }, step);
  // Key and pointer events in what the viewer sends: the session is in use (idle hibernation).
  const scanner = o.onInput ? new RfbInputScanner() : null;
  const onInput = o.onInput;
  const stop = relayWebSockets(viewer, stream, {
    onBytes: (dir, n, data) => {
      active = true;
      if (dir === 'ab') {
        bytes.toSession += n;
        if (scanner !== null && scanner.scan(data)) onInput!();
      } else bytes.toViewer += n;
    },
    onClose: () => {
      clearInterval(idle);
      o.onClose?.();
    },
  });
  return stop;
}
