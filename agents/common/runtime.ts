/**
 * The agent's connection to the control plane (after Coder's agent): it dials out, registers
 * with what it really runs, heartbeats, executes commands through its platform driver and
 * reconnects forever with capped jittered backoff. Commands are de-duplicated by id, and those
 * for one session run one at a time, so a re-delivered command never runs twice concurrently.
 */
import http from 'node:http';
import WebSocket from 'ws';
import { envOptional } from '../../config/env';
import type { Logger } from '../../config/log';
import {
  AGENT_CONNECT_PATH,
  AgentMessage,
  CancelCommandMessage,
  CloseCode,
  CommandMessage,
  CommandResult,
  encode,
  MAX_CONTROL_FRAME_BYTES,
  OpenStreamMessage,
  parseControlPlaneMessage,
  parseStartSessionData,
  PROTOCOL_VERSION,
} from '../../protocol/messages';
import { backoffDelay } from './backoff';
import type { AgentConfig } from './config';
import { CommandContext, DriverError, SessionDriver } from './driver';
import { CommandJournal, Outcome, OutboxEntry } from './journal';
import { AgentMetrics, createAgentMetrics } from './metrics';

/** How many finished command outcomes are remembered for re-delivered commands. */
const OUTCOME_MEMORY = 2000;
/** A result not acknowledged within this long is sent again. */
const RESEND_AFTER_MS = 3000;

export class AgentRuntime {
  private ws: WebSocket | null = null;
  private attempt = 0;
  private stopped = true;
  private registered = false;
  private heartbeatTimer: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private healthServer: http.Server | null = null;
  private readonly inflight = new Map<string, { promise: Promise<Outcome>; abort: AbortController; cmd: CommandMessage }>();
  /** Recent outcomes (the journal keeps the unacknowledged ones across restarts). */
  private readonly outcomes = new Map<string, Omit<OutboxEntry, 'at'>>();
  private resendTimer: NodeJS.Timeout | null = null;
  /** Local clock minus the control plane's, measured at registration (network delay included: a few ms early at worst). */
  private clockOffsetMs = 0;
  readonly journal: CommandJournal;
  /** The agent's Prometheus metrics, served at the health port's /metrics (agents/common/metrics.ts). */
  readonly metrics: AgentMetrics = createAgentMetrics();
  private readonly sessionQueues = new Map<string, Promise<unknown>>();
  /** Set by the VNC tunnel module to serve open_stream requests. */
  onOpenStream: ((msg: OpenStreamMessage) => void) | null = null;
  /** Called on every successful registration (tests and benchmarks measure reconnects with it). */
  onRegistered: (() => void) | null = null;
  /** Extra registration metadata (HA: the lease's fencing token, agents/common/ha-main.ts). */
  registrationMetadata: (() => Record<string, unknown>) | null = null;

  /** Extra origins stream sockets may be dialled to (AGENT_STREAM_HOSTS), besides CONTROL_PLANE_URL's. */
  private readonly streamHosts: StreamHost[];

  constructor(
    readonly config: AgentConfig,
    readonly driver: SessionDriver,
    private readonly log: Logger,
    env: NodeJS.ProcessEnv = process.env,
  ) {
    this.streamHosts = parseStreamHosts(envOptional('AGENT_STREAM_HOSTS', env) ?? '');
    this.journal = new CommandJournal(env.AGENT_STATE_DIR === 'none' ? null : CommandJournal.defaultFile(config.agentId, env));
  }

  get url(): string {
    const u = new URL(this.config.controlPlaneUrl);
    if (u.pathname === '/' || u.pathname === '') u.pathname = AGENT_CONNECT_PATH;
    return u.toString();
  }

  get isRegistered(): boolean {
    return this.registered;
  }

  /**
   * Starts /health (liveness: the process answers), /ready and /metrics on HEALTH_PORT (default
   * 8082). Readiness is "able to do this replica's job": registered with the control plane, or
   * what `ready` says (an HA follower is ready when it could take over, not only when it leads).
   */
  async startHealthServer(extra: () => Record<string, unknown> = () => ({}), ready: () => boolean = () => this.registered): Promise<void> {
    if (this.config.healthPort === 0 && this.healthServer) return;
    this.healthServer = http.createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path === '/health') return void res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
      if (path === '/metrics') {
        const m = this.metrics;
        if (!m) return void res.writeHead(404).end();
        void m.render().then(
          (text) => res.writeHead(200, { 'content-type': m.contentType }).end(text),
          () => res.writeHead(500).end(),
        );
        return;
      }
      if (path === '/ready') {
        const ok = ready();
        const body = JSON.stringify({ status: ok ? 'ready' : 'not ready', registered: this.registered, ...extra() });
        return void res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json' }).end(body);
      }
      res.writeHead(404).end();
    });
    await new Promise<void>((resolve, reject) => {
      this.healthServer!.once('error', reject);
      this.healthServer!.listen(this.config.healthPort, this.config.healthHost, () => resolve());
    });
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
    this.resendTimer = setInterval(() => this.resendResults(RESEND_AFTER_MS), RESEND_AFTER_MS);
    this.resendTimer.unref();
  }

  /** Closes the control connection (no reconnect); keepHealth leaves /health and /ready up. */
  async stop(opts: { keepHealth?: boolean } = {}): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.resendTimer) clearInterval(this.resendTimer);
    this.clearHeartbeat();
    const ws = this.ws;
    this.ws = null;
    this.registered = false;
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      await new Promise<void>((resolve) => {
        ws.once('close', () => resolve());
        ws.close(CloseCode.ShuttingDown, 'agent stopping');
        setTimeout(() => (ws.terminate(), resolve()), 2000).unref();
      });
    }
    if (opts.keepHealth) return;
    if (this.healthServer) await new Promise<void>((r) => this.healthServer!.close(() => r()));
    this.healthServer = null;
  }

  private connect(): void {
    if (this.stopped) return;
    const ws = new WebSocket(this.url, {
      headers: { authorization: `Bearer ${this.config.token}` },
      handshakeTimeout: 10_000,
      maxPayload: MAX_CONTROL_FRAME_BYTES,
    });
    this.ws = ws;
    ws.on('open', () => void this.register(ws));
    ws.on('message', (data, isBinary) => this.onMessage(ws, data, isBinary));
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => this.log.error('control plane refused the agent', { status: res.statusCode, body: body.slice(0, 300) }));
    });
    ws.on('error', (err) => this.log.debug('control connection error', { error: err.message }));
    ws.on('close', (code, reason) => {
      if (this.ws !== ws) return;
      this.ws = null;
      const wasRegistered = this.registered;
      this.registered = false;
      this.clearHeartbeat();
      if (this.stopped) return;
      const delay = backoffDelay(this.attempt++, this.config.reconnectInitialDelayMs, this.config.reconnectMaxDelayMs);
      (wasRegistered ? this.log.warn : this.log.debug)('control connection closed; reconnecting', {
        code,
        reason: reason.toString(),
        in_ms: delay,
      });
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
    });
  }

  private async register(ws: WebSocket): Promise<void> {
    try {
      const sessions = await this.driver.list();
      this.send(ws, {
        type: 'register',
        protocol_version: PROTOCOL_VERSION,
        agent_id: this.config.agentId,
        platform: this.config.platform,
        region: this.config.region,
        cluster_id: this.config.clusterId,
        capacity: this.config.capacity,
        sessions,
        metadata: { identity: this.config.identity, ...this.registrationMetadata?.() },
      });
    } catch (err) {
      this.log.error('cannot list sessions for registration', { error: (err as Error).message });
      ws.close(1011, 'agent cannot read its platform');
    }
  }

  private send(ws: WebSocket | null, msg: AgentMessage): boolean {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(encode(msg));
    return true;
  }

  private onMessage(ws: WebSocket, data: WebSocket.RawData, isBinary: boolean): void {
    const parsed = isBinary ? { ok: false as const, reason: 'binary frame on control socket' } : parseControlPlaneMessage(data);
    if (!parsed.ok) {
      this.log.warn('ignoring malformed frame from control plane', { reason: parsed.reason });
      return;
    }
    const msg = parsed.value;
    switch (msg.type) {
      case 'registered':
        if (msg.server_time_ms !== undefined) this.clockOffsetMs = Date.now() - msg.server_time_ms;
        this.registered = true;
        this.attempt = 0;
        this.log.info('Agent registered successfully with Control Plane', { agent: this.config.agentId, conn: msg.conn_id });
        this.startHeartbeat(ws, msg.heartbeat_interval_ms);
        // Results the previous connection (or process) could not get acknowledged.
        this.resendResults(0);
        this.onRegistered?.();
        return;
      case 'command':
        this.onCommand(ws, msg);
        return;
      case 'cancel_command':
        this.onCancel(msg);
        return;
      case 'result_ack':
        this.journal.acknowledged(msg.command_id);
        return;
      case 'open_stream': {
        // The agent attaches its bearer token to the stream socket: it only dials its own control
        // plane (or AGENT_STREAM_HOSTS), never a URL whoever could inject a message chose.
        const url = this.allowedStreamUrl(msg.url);
        if (!url) {
          this.log.error('refusing to dial a stream URL outside the control plane origin (AGENT_STREAM_HOSTS)', {
            stream: msg.stream_id,
            session: msg.session_id,
            url: msg.url.slice(0, 300),
          });
          this.send(ws, {
            type: 'stream_error',
            stream_id: msg.stream_id,
            error: 'stream URL refused: not the control plane origin nor in AGENT_STREAM_HOSTS',
          });
          return;
        }
        if (this.onOpenStream) this.onOpenStream({ ...msg, url });
        else this.send(ws, { type: 'stream_error', stream_id: msg.stream_id, error: 'this agent does not serve VNC streams' });
        return;
      }
      case 'error':
        (msg.fatal ? this.log.error : this.log.warn)('control plane reported an error', { reason: msg.reason });
        return;
    }
  }

  /**
   * The absolute ws(s) URL for an open_stream url when the agent may dial it, else null: the
   * control plane's own origin (relative URLs resolve to it), or an AGENT_STREAM_HOSTS entry. A
   * wss control plane never gets a plain ws stream (the bearer token would travel in clear).
   */
  allowedStreamUrl(raw: string): string | null {
    const base = new URL(this.url.replace(/^http/, 'ws'));
    let u: URL;
    try {
      u = new URL(raw, base);
    } catch {
      return null;
    }
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') return null;
    if (base.protocol === 'wss:' && u.protocol !== 'wss:') return null;
    if (u.username || u.password) return null;
    if (u.origin === base.origin) return u.toString();
    return this.streamHosts.some((h) => matchesStreamHost(h, u)) ? u.toString() : null;
  }

  private startHeartbeat(ws: WebSocket, intervalMs: number): void {
    this.clearHeartbeat();
    const beat = async () => {
      let active = 0;
      try {
        active = (await this.driver.list()).filter((s) => s.state === 'running' || s.state === 'starting').length;
      } catch {
        // the heartbeat itself matters more than the count
      }
      this.send(ws, { type: 'heartbeat', active_sessions: active });
    };
    this.heartbeatTimer = setInterval(() => void beat(), intervalMs);
  }

  private clearHeartbeat(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.heartbeatTimer = null;
  }

  /** Tells the control plane that a requested VNC stream could not be opened. */
  streamError(streamId: string, error: string): void {
    this.reply({ type: 'stream_error', stream_id: streamId, error: error.slice(0, 1000) });
  }

  /** The current socket, whichever connection a late result has to go out on. */
  private reply(msg: AgentMessage): void {
    this.send(this.ws, msg);
  }

  private onCommand(ws: WebSocket, cmd: CommandMessage): void {
    // The earlier of: the time left when it was sent, and its deadline on the control plane's clock
    // (which catches a frame that sat in the socket buffer while this process was frozen).
    const deadline = Math.min(Date.now() + cmd.expires_in_ms, cmd.expires_at_ms !== undefined ? cmd.expires_at_ms + this.clockOffsetMs : Infinity);
    this.send(ws, { type: 'ack', command_id: cmd.command_id });
    const known = this.outcomes.get(cmd.command_id)?.outcome ?? this.journal.result(cmd.command_id)?.outcome;
    // A retryable failure delivered again is a retry: run it again rather than replay the failure.
    if (known && (known.ok || !known.retryable)) return this.report(cmd.command_id, known);
    this.outcomes.delete(cmd.command_id);
    if (this.inflight.has(cmd.command_id)) return; // its result goes out when it finishes
    const abort = new AbortController();
    const began = { value: false };
    const run = this.serialised(cmd.session_id, () => this.admitAndExecute(cmd, deadline, abort.signal, began));
    this.inflight.set(cmd.command_id, { promise: run, abort, cmd });
    void run.then(async (outcome) => {
      this.inflight.delete(cmd.command_id);
      if (abort.signal.aborted && began.value) {
        // Abandoned while it ran: undo what it did, then report it as abandoned. Also when it
        // stopped itself at the abandonment (a failure): it may have done part of its work (a
        // container created but not started, a pod's objects without the pod).
        await this.serialised(cmd.session_id, () => this.undo(cmd));
        if (outcome.ok) outcome = { ok: false, error: 'abandoned by the control plane; undone', retryable: false };
      }
      this.finish(cmd, outcome);
    });
  }

  /**
   * Runs the command when its turn comes, unless it may not run any more: expired (its deadline
   * passed while it waited), abandoned, or stale (the session already acted on a newer command).
   */
  private async admitAndExecute(cmd: CommandMessage, deadline: number, signal: AbortSignal, began: { value: boolean }): Promise<Outcome> {
    const refuse = (reason: 'expired' | 'withdrawn' | 'stale', error: string): Outcome => {
      this.metrics.commandsRefused.inc({ type: cmd.command_type, reason });
      this.log.warn('command refused', { command: cmd.command_type, id: cmd.command_id, session: cmd.session_id, reason: error });
      return { ok: false, error, retryable: false };
    };
    if (signal.aborted || this.journal.isAbandoned(cmd.command_id)) return refuse('withdrawn', 'withdrawn by the control plane before it ran');
    if (Date.now() > deadline) return refuse('expired', `expired before it ran (deadline passed ${Date.now() - deadline} ms ago)`);
    const newest = this.journal.generation(cmd.session_id);
    if (cmd.generation < newest)
      return refuse('stale', `stale: session ${cmd.session_id} already acted on command generation ${newest} (this is ${cmd.generation})`);
    this.journal.begin(cmd.session_id, cmd.generation);
    began.value = true;
    return this.execute(cmd, { generation: cmd.generation, signal, deadline });
  }

  /** Puts back what an abandoned command did (only if nothing newer acted on the session since). */
  private async undo(cmd: CommandMessage): Promise<void> {
    if (this.journal.generation(cmd.session_id) > cmd.generation) return;
    const noop = () => undefined;
    const ctx = { generation: cmd.generation, signal: new AbortController().signal, deadline: Infinity };
    try {
      if (cmd.command_type === 'start_session') await this.driver.stop(cmd.session_id, noop, ctx);
      else if (cmd.command_type === 'wake_session') await this.driver.hibernate(cmd.session_id, noop, ctx);
      else if (cmd.command_type === 'hibernate_session') await this.driver.wake(cmd.session_id, noop, ctx);
      else return; // a stop is never undone
      this.log.warn('abandoned command undone', { command: cmd.command_type, id: cmd.command_id, session: cmd.session_id });
    } catch (err) {
      // Reconciliation on the next registration sees (and repairs) whatever is left.
      this.log.error('cannot undo an abandoned command', { command: cmd.command_type, session: cmd.session_id, error: (err as Error).message });
    }
  }

  /** The control plane gave up on a command: never start it; undo it if it ran or runs. */
  private onCancel(msg: CancelCommandMessage): void {
    this.journal.abandon(msg.command_id);
    const running = this.inflight.get(msg.command_id);
    if (running) {
      running.abort.abort();
      return; // undone when it finishes
    }
    const done = this.outcomes.get(msg.command_id) ?? this.journal.result(msg.command_id);
    if (done?.outcome.ok) {
      const cmd = {
        type: 'command',
        command_id: msg.command_id,
        session_id: done.sessionId,
        command_type: done.type,
        generation: done.generation,
      } as CommandMessage;
      void this.serialised(done.sessionId, () => this.undo(cmd));
    }
    this.journal.acknowledged(msg.command_id);
  }

  /** Records the outcome (durably, until acknowledged) and reports it. */
  private finish(cmd: CommandMessage, outcome: Outcome): void {
    const entry = { commandId: cmd.command_id, sessionId: cmd.session_id, type: cmd.command_type, generation: cmd.generation, outcome };
    this.journal.remember(entry);
    this.outcomes.set(cmd.command_id, entry);
    if (this.outcomes.size > OUTCOME_MEMORY) this.outcomes.delete(this.outcomes.keys().next().value as string);
    this.report(cmd.command_id, outcome);
  }

  private report(commandId: string, outcome: Outcome): void {
    if (outcome.ok) this.reply({ type: 'completed', command_id: commandId, result: outcome.result });
    else this.reply({ type: 'failed', command_id: commandId, error: outcome.error, retryable: outcome.retryable });
  }

  /** Re-sends every result the control plane has not acknowledged yet (olderThanMs: not just sent). */
  private resendResults(olderThanMs: number): void {
    const now = Date.now();
    for (const e of this.journal.unacknowledged()) {
      if (now - e.at < olderThanMs) continue;
      if (!this.registered) return;
      this.metrics.resultsResent.inc();
      this.report(e.commandId, e.outcome);
    }
  }

  private serialised<T>(sessionId: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.sessionQueues.get(sessionId) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const settled = next.catch(() => undefined);
    this.sessionQueues.set(sessionId, settled);
    void settled.then(() => {
      if (this.sessionQueues.get(sessionId) === settled) this.sessionQueues.delete(sessionId);
    });
    return next;
  }

  private async execute(cmd: CommandMessage, ctx: CommandContext): Promise<Outcome> {
    const progress = (message: string) => this.reply({ type: 'progress', command_id: cmd.command_id, message: message.slice(0, 500) });
    const started = Date.now();
    try {
      let result: CommandResult;
      switch (cmd.command_type) {
        case 'start_session': {
          const data = parseStartSessionData(cmd.data);
          if (!data.ok) return { ok: false, error: data.reason, retryable: false };
          result = await this.driver.start(cmd.session_id, data.value, progress, ctx);
          break;
        }
        case 'hibernate_session':
          result = await this.driver.hibernate(cmd.session_id, progress, ctx);
          break;
        case 'wake_session':
          result = await this.driver.wake(cmd.session_id, progress, ctx);
          break;
        case 'stop_session':
          result = await this.driver.stop(cmd.session_id, progress, ctx);
          break;
      }
      this.metrics.commandsExecuted.inc({ type: cmd.command_type, outcome: 'completed' });
      this.log.info('command completed', { command: cmd.command_type, session: cmd.session_id, generation: cmd.generation, ms: Date.now() - started });
      return { ok: true, result };
    } catch (err) {
      const retryable = err instanceof DriverError ? err.retryable : true;
      const error = (err as Error).message || String(err);
      this.metrics.commandsExecuted.inc({ type: cmd.command_type, outcome: 'failed' });
      this.log.warn('command failed', { command: cmd.command_type, session: cmd.session_id, error, retryable });
      return { ok: false, error, retryable };
    }
  }
}

interface StreamHost {
  protocol: string | null;
  /** Lower-case host name; for "*.example.com" the suffix ".example.com". */
  host: string;
  wildcard: boolean;
  /** For an IPv4 CIDR entry (e.g. a pod network): network address and prefix length. */
  cidr: { net: number; bits: number } | null;
  port: string | null;
}

const DEFAULT_PORT: Record<string, string> = { 'ws:': '80', 'wss:': '443' };

function ipv4(s: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  const parts = m.slice(1).map(Number);
  return parts.some((p) => p > 255) ? null : parts.reduce((a, p) => a * 256 + p, 0);
}

const maskOf = (bits: number) => (bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0);

/**
 * AGENT_STREAM_HOSTS: comma or space separated `host`, `host:port`, `*.domain[:port]`,
 * `a.b.c.d/nn[:port]` (IPv4 CIDR, e.g. the API pods' network) or `ws(s)://host[:port]`. An entry
 * without port allows any port on it.
 */
export function parseStreamHosts(value: string): StreamHost[] {
  return value
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((entry) => {
      const m = /^(?:(wss?):\/\/)?(\*\.)?([^/:[\]]+|\[[0-9a-fA-F:.]+\])(?:\/(\d{1,2}))?(?::(\d{1,5}))?\/?$/.exec(entry);
      const net = m?.[4] !== undefined ? ipv4(m[3]) : null;
      if (!m || (m[4] !== undefined && (net === null || Number(m[4]) > 32 || m[2])))
        throw new Error(`AGENT_STREAM_HOSTS: "${entry}" is not host, host:port, *.domain, a.b.c.d/nn or ws(s)://host:port`);
      const [, scheme, star, host, bits, port] = m;
      return {
        protocol: scheme ? `${scheme}:` : null,
        host: (star ? '.' : '') + host.toLowerCase(),
        wildcard: !!star,
        cidr: bits !== undefined ? { net: (net! & maskOf(Number(bits))) >>> 0, bits: Number(bits) } : null,
        port: port ?? null,
      };
    });
}

function matchesStreamHost(h: StreamHost, u: URL): boolean {
  if (h.protocol && h.protocol !== u.protocol) return false;
  const host = u.hostname.toLowerCase();
  if (h.cidr) {
    const ip = ipv4(host);
    if (ip === null || (ip & maskOf(h.cidr.bits)) >>> 0 !== h.cidr.net) return false;
  } else if (h.wildcard ? !(host.endsWith(h.host) && host.length > h.host.length) : host !== h.host) return false;
  return h.port === null || h.port === (u.port || DEFAULT_PORT[u.protocol]);
}
