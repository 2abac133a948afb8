/**
 * A bench-only agent that speaks the real protocol (protocol/messages.ts) over a real WebSocket
 * but runs nothing: every command is acked and completed at once, so what is measured is the
 * control plane alone. It records when each command frame arrives (hrtime, on receipt, before
 * parsing) so "API call → agent has it" can be timed per session.
 */
import WebSocket from 'ws';
import { AGENT_CONNECT_PATH, AgentMessage, CommandMessage, CommandResult, encode, parseControlPlaneMessage, PROTOCOL_VERSION } from '../protocol/messages';
import { now } from './common';

const RESULTS: Record<CommandMessage['command_type'], CommandResult> = {
  start_session: { state: 'running', vnc: { host: '127.0.0.1', port: 5900 } },
  wake_session: { state: 'running', vnc: { host: '127.0.0.1', port: 5900 } },
  hibernate_session: { state: 'hibernated' },
  stop_session: { state: 'terminated' },
};

export class FakeAgent {
  private ws: WebSocket | null = null;
  private heartbeat: NodeJS.Timeout | null = null;
  private readonly running = new Set<string>();
  /** First arrival of each (session, command type). */
  private readonly arrivals = new Map<string, bigint>();
  private readonly waiters = new Map<string, (t: bigint) => void>();
  commandsReceived = 0;
  /** Command ids seen per (session, generation, type): more than one id is a duplicate issue. */
  private readonly issued = new Map<string, Set<string>>();

  constructor(
    readonly agentId: string,
    private readonly url: string,
    private readonly token: string,
    private readonly maxSessions = 1000,
  ) {}

  /** Operations the control plane issued more than once (distinct command ids for one generation). */
  duplicates(): string[] {
    return [...this.issued].filter(([, ids]) => ids.size > 1).map(([k]) => k);
  }

  /** Connects and registers; resolves on the control plane's `registered`. */
  connect(timeoutMs = 10_000): Promise<void> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url.replace(/\/?$/, AGENT_CONNECT_PATH), {
        headers: { authorization: `Bearer ${this.token}` },
        perMessageDeflate: false,
      });
      this.ws = ws;
      const timer = setTimeout(() => reject(new Error('fake agent: not registered in time')), timeoutMs);
      ws.on('open', () =>
        this.send({
          type: 'register',
          protocol_version: PROTOCOL_VERSION,
          agent_id: this.agentId,
          platform: 'docker',
          region: 'local',
          capacity: { max_sessions: this.maxSessions },
          sessions: [],
        }),
      );
      ws.on('error', (err) => reject(err));
      ws.on('close', (code, reason) => {
        clearTimeout(timer);
        const why = `fake agent socket closed: ${code} ${reason.toString()}`;
        reject(new Error(why)); // no-op once registered; then commandArrival() times out, and this says why
        process.stderr.write(`${why}\n`);
      });
      ws.on('message', (data, isBinary) => {
        const at = now();
        const parsed = isBinary ? null : parseControlPlaneMessage(data);
        if (!parsed?.ok) {
          process.stderr.write(`fake agent: bad frame from control plane: ${parsed?.reason ?? 'binary frame'}\n`);
          return;
        }
        const msg = parsed.value;
        switch (msg.type) {
          case 'registered':
            clearTimeout(timer);
            this.startHeartbeat(msg.heartbeat_interval_ms);
            resolve();
            return;
          case 'command':
            this.onCommand(msg, at);
            return;
          case 'open_stream':
            this.send({ type: 'stream_error', stream_id: msg.stream_id, error: 'fake agent serves no VNC' });
            return;
          case 'error':
            process.stderr.write(`fake agent: control plane error: ${msg.reason}\n`);
            return;
        }
      });
    });
  }

  private send(msg: AgentMessage): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(encode(msg));
  }

  private startHeartbeat(intervalMs: number): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => this.send({ type: 'heartbeat', active_sessions: this.running.size }), intervalMs);
  }

  private onCommand(cmd: CommandMessage, at: bigint): void {
    this.commandsReceived++;
    const op = `${cmd.session_id}:${cmd.generation}:${cmd.command_type}`;
    const ids = this.issued.get(op) ?? new Set<string>();
    ids.add(cmd.command_id);
    this.issued.set(op, ids);
    const key = `${cmd.session_id}/${cmd.command_type}`;
    if (!this.arrivals.has(key)) {
      this.arrivals.set(key, at);
      this.waiters.get(key)?.(at);
      this.waiters.delete(key);
    }
    // Reply at once: ack, then the outcome (re-deliveries get the same answer, as a real agent's).
    this.send({ type: 'ack', command_id: cmd.command_id });
    const result = RESULTS[cmd.command_type];
    if (result.state === 'running') this.running.add(cmd.session_id);
    else this.running.delete(cmd.session_id);
    this.send({ type: 'completed', command_id: cmd.command_id, result });
  }

  /** When the first command of this type for this session arrived (waits for it, bounded). */
  commandArrival(sessionId: string, type: CommandMessage['command_type'] = 'start_session', timeoutMs = 30_000): Promise<bigint> {
    const key = `${sessionId}/${type}`;
    const known = this.arrivals.get(key);
    if (known !== undefined) return Promise.resolve(known);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(key);
        reject(new Error(`fake agent: no ${type} for ${sessionId} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.set(key, (t) => {
        clearTimeout(timer);
        resolve(t);
      });
    });
  }

  close(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    const ws = this.ws;
    this.ws = null;
    ws?.removeAllListeners('close');
    ws?.on('error', () => undefined);
    ws?.close(1001, 'bench done');
  }
}
