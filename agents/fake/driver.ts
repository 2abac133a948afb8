/**
 * A driver that runs no containers: each "session" is an entry in a state file, so it outlives
 * an agent restart as a container would. It goes through the real agent runtime (protocol,
 * journal, de-duplication, result acknowledgement), which makes it the protocol-faithful agent
 * for chaos and scale tests. Every create and remove is appended to an events file (JSON lines,
 * with the command generation), so a test counts "created twice" exactly where a real driver
 * would act.
 */
import { appendFileSync, existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CommandResult, ReportedSession, StartSessionData, VncEndpoint } from '../../protocol/messages';
import { CommandContext, DriverError, mustNotProceed, Progress, SessionDriver } from '../common/driver';

export interface FakeDriverOptions {
  agentId: string;
  maxSessions: number;
  /** How long a start takes before the "container" exists (ms). */
  startDelayMs: number;
  /** How long hibernate, wake and stop take (ms). */
  opDelayMs: number;
  /**
   * How long a created "container" waits before it runs (ms; 0: created running). Models the
   * real drivers' two steps (create, then start): a start abandoned in between leaves a created,
   * not running, container behind unless the agent undoes it.
   */
  runDelayMs?: number;
  /** Where the sessions are kept across restarts; absent: memory only. */
  stateFile?: string;
  /** JSON lines: {at, agent, session, generation, event: created|removed|hibernated|woken}. */
  eventsFile?: string;
}

type FakeState = 'created' | 'running' | 'hibernated';

export class FakeDriver implements SessionDriver {
  readonly platform = 'docker' as const;
  private sessions = new Map<string, { state: FakeState; generation: number }>();

  constructor(private readonly o: FakeDriverOptions) {}

  async init(): Promise<void> {
    if (this.o.stateFile && existsSync(this.o.stateFile)) {
      this.sessions = new Map(Object.entries(JSON.parse(readFileSync(this.o.stateFile, 'utf8')) as Record<string, { state: FakeState; generation: number }>));
    }
  }

  async start(sessionId: string, _data: StartSessionData, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    const existing = this.sessions.get(sessionId);
    if (!existing) {
      progress('creating fake container');
      await sleep(this.o.startDelayMs);
      if (mustNotProceed(ctx)) throw DriverError.abandoned('creating the container', ctx);
      const running = [...this.sessions.values()].filter((s) => s.state === 'running').length;
      if (running >= this.o.maxSessions) throw new DriverError(`agent ${this.o.agentId} is at capacity (${running}/${this.o.maxSessions} sessions)`, true);
      const twoSteps = (this.o.runDelayMs ?? 0) > 0;
      this.sessions.set(sessionId, { state: twoSteps ? 'created' : 'running', generation: ctx?.generation ?? 0 });
      this.event(sessionId, 'created', ctx);
      this.save();
      if (twoSteps) return this.run(sessionId, ctx);
    } else if (existing.state === 'created') {
      return this.run(sessionId, ctx);
    } else if (existing.state !== 'running') {
      existing.state = 'running';
      this.event(sessionId, 'woken', ctx);
      this.save();
    }
    return this.runningResult(sessionId);
  }

  /** The second step of a two-step start: the created "container" runs. */
  private async run(sessionId: string, ctx?: CommandContext): Promise<CommandResult> {
    await sleep(this.o.runDelayMs ?? 0);
    if (mustNotProceed(ctx)) throw DriverError.abandoned('starting the container', ctx);
    const s = this.sessions.get(sessionId);
    if (!s) throw new DriverError(`session ${sessionId} was removed while it started`, false);
    s.state = 'running';
    this.save();
    return this.runningResult(sessionId);
  }

  async hibernate(sessionId: string, _progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    await sleep(this.o.opDelayMs);
    const s = this.sessions.get(sessionId);
    if (!s) throw new DriverError(`session ${sessionId} has no container on agent ${this.o.agentId}`, false);
    if (s.state !== 'hibernated') {
      if (mustNotProceed(ctx)) throw DriverError.abandoned('stopping the container', ctx);
      s.state = 'hibernated';
      this.event(sessionId, 'hibernated', ctx);
      this.save();
    }
    return { state: 'hibernated' };
  }

  async wake(sessionId: string, _progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    await sleep(this.o.opDelayMs);
    const s = this.sessions.get(sessionId);
    if (!s) throw new DriverError(`session ${sessionId} has no container on agent ${this.o.agentId}`, false);
    if (s.state !== 'running') {
      if (mustNotProceed(ctx)) throw DriverError.abandoned('starting the container', ctx);
      s.state = 'running';
      this.event(sessionId, 'woken', ctx);
      this.save();
    }
    return this.runningResult(sessionId);
  }

  async stop(sessionId: string, _progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    await sleep(this.o.opDelayMs);
    if (this.sessions.delete(sessionId)) {
      this.event(sessionId, 'removed', ctx);
      this.save();
    }
    return { state: 'terminated' };
  }

  async list(): Promise<ReportedSession[]> {
    return [...this.sessions].map(([id, s]) => ({ session_id: id, state: s.state === 'created' ? 'starting' : s.state }));
  }

  async vncEndpoint(sessionId: string): Promise<VncEndpoint> {
    throw new DriverError(`session ${sessionId}: the fake agent serves no VNC`, false);
  }

  async close(): Promise<void> {}

  private runningResult(sessionId: string): CommandResult {
    return { state: 'running', vnc: { host: '127.0.0.1', port: 5900 }, platform_metadata: { fake: true, container_name: `fake-${sessionId}` } };
  }

  private event(session: string, event: string, ctx?: CommandContext): void {
    if (!this.o.eventsFile) return;
    appendFileSync(this.o.eventsFile, JSON.stringify({ at: Date.now(), agent: this.o.agentId, session, generation: ctx?.generation ?? null, event }) + '\n');
  }

  private save(): void {
    if (!this.o.stateFile) return;
    const tmp = `${this.o.stateFile}.tmp`;
    writeFileSync(tmp, JSON.stringify(Object.fromEntries(this.sessions)));
    renameSync(tmp, this.o.stateFile);
  }
}
