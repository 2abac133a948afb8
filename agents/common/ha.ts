/**
 * High availability for the Docker agent (ENABLE_HA=true): several agent processes for one Docker
 * engine share one AGENT_ID; they elect a leader through a lease (HA_BACKEND=redis: a Redis key;
 * HA_BACKEND=file: a lease file on one host). Only the leader dials the control plane and touches
 * Docker; followers wait, watch the lease and log who leads.
 *
 * The algorithm is the Kubernetes agent's (agents/kubernetes/leader.ts, after client-go): every
 * RETRY_PERIOD a candidate tries to acquire, the leader to renew; every lease call has a timeout
 * (at most RETRY_PERIOD, never past the renew deadline); a timer steps the leader down
 * RENEW_DEADLINE after the start of its last successful renew even while a call still hangs. The
 * lease outlives that by LEASE_DURATION − RENEW_DEADLINE (Redis: the key's TTL starts when Redis
 * runs the renew, after it was sent; file: followers count LEASE_DURATION from when they saw the
 * renew), so a follower can acquire only after the old leader stopped acting. All local durations
 * use the monotonic clock.
 *
 * Fencing: each acquisition carries a fencing token that only grows (Redis: INCR of a companion
 * key; file: a counter in the lease). The leader's driver is wrapped (FencedDriver): before every
 * Docker create/start/stop/remove it checks, against the monotonic clock and not a timer (a process
 * thawed after SIGSTOP runs socket callbacks before its timers), that it still holds a lease it
 * proved within RENEW_DEADLINE; its registration carries the token (metadata.ha_fencing_token) so
 * the gateway refuses an older leader's connection once a newer one registered.
 */
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../../config/log';
import type { CommandResult, ReportedSession, StartSessionData, VncEndpoint } from '../../protocol/messages';
import type { HaConfig } from './config';
import { CommandContext, DriverError, Progress, SessionDriver } from './driver';
import type { AgentMetrics } from './metrics';
import { hasVncSecrets } from './rfb-auth';

/** Monotonic milliseconds. */
export const now = () => performance.now();

/** This process as a lease candidate: a display identity plus a nonce no other process has. */
export interface Candidate {
  identity: string;
  nonce: string;
}

export type LeaseAttempt = { ok: true; fencingToken: number } | { ok: false; holder: string | null; holderNonce: string | null };

/** One lease store (Redis key, lease file). Every call must honour `signal` (reject once it aborts). */
export interface LeaseBackend {
  /** "Redis" | "file", as in "Successfully acquired leader lease via Redis". */
  readonly label: string;
  /** Where the lease lives (key name, file path), for logs. */
  readonly where: string;
  /** Acquire (not leading) or renew (leading). Never takes over a lease someone else holds unexpired. */
  acquireOrRenew(leading: boolean, signal: AbortSignal): Promise<LeaseAttempt>;
  /** Gives the lease up if this candidate holds it (compare-and-delete); true if it did. */
  release(signal: AbortSignal): Promise<boolean>;
  /** Calls back whenever the lease may have been released, so followers try at once. */
  watch(onChange: () => void): void;
  close(): Promise<void>;
}

/** Rejects when `signal` aborts, whatever `p` does (a hung Redis call cannot hold a deadline back). */
export function abortable<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(
      (v) => (signal.removeEventListener('abort', onAbort), resolve(v)),
      (e) => (signal.removeEventListener('abort', onAbort), reject(e)),
    );
  });
}

/** client-go's JitterFactor: RENEW_DEADLINE must leave room for more than one retry. */
const JITTER_FACTOR = 1.2;

/** Throws unless LEASE_DURATION > RENEW_DEADLINE > 1.2 × RETRY_PERIOD > 0 (as the Kubernetes agent). */
export function validateHaTimings(t: Pick<HaConfig, 'leaseDurationMs' | 'renewDeadlineMs' | 'retryPeriodMs'>): void {
  const problems: string[] = [];
  for (const [name, v] of [
    ['LEASE_DURATION', t.leaseDurationMs],
    ['RENEW_DEADLINE', t.renewDeadlineMs],
    ['RETRY_PERIOD', t.retryPeriodMs],
  ] as const)
    if (!Number.isFinite(v) || v <= 0) problems.push(`${name} must be a positive duration (got ${v} ms)`);
  if (!problems.length && t.renewDeadlineMs >= t.leaseDurationMs)
    problems.push(
      `RENEW_DEADLINE (${t.renewDeadlineMs} ms) must be shorter than LEASE_DURATION (${t.leaseDurationMs} ms): ` +
        'a leader must stop acting before a follower may take the lease over',
    );
  if (!problems.length && t.renewDeadlineMs <= JITTER_FACTOR * t.retryPeriodMs)
    problems.push(`RENEW_DEADLINE (${t.renewDeadlineMs} ms) must be longer than ${JITTER_FACTOR} × RETRY_PERIOD (${t.retryPeriodMs} ms)`);
  if (problems.length) throw new Error(`invalid leader election settings: ${problems.join('; ')}`);
}

export interface HaElectorOptions {
  backend: LeaseBackend;
  candidate: Candidate;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  agentId: string;
  log: Logger;
  metrics?: AgentMetrics;
  onStartedLeading: () => void | Promise<void>;
  onStoppedLeading: () => void | Promise<void>;
}

/** What the driver wrapper and the registration consult: may this process act now, under which token? */
export interface Fence {
  /** True only while leading and within RENEW_DEADLINE of the start of the last successful renew (monotonic clock). */
  canAct(): boolean;
  /** Epoch ms (local wall clock) until which this process may act; -Infinity when it may not. */
  actUntil(): number;
  /** Aborts when this process steps down (a fresh signal per leadership term). */
  readonly signal: AbortSignal;
  readonly fencingToken: number | null;
}

export class HaElector implements Fence {
  private leading = false;
  private stopped = false;
  private term = 0;
  private timer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  private readonly inflight = new Set<AbortController>();
  private ticking = false;
  private tickAgain = false;
  private lastRenew = -Infinity;
  private lastContact = -Infinity;
  private knownLeader = '';
  private token: number | null = null;
  private termAbort = new AbortController();

  constructor(private readonly o: HaElectorOptions) {
    validateHaTimings(o);
    this.termAbort.abort(new Error('not the leader'));
    o.metrics?.leaderStatus.set({ agent_id: o.agentId }, 0);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  get fencingToken(): number | null {
    return this.leading ? this.token : null;
  }

  get signal(): AbortSignal {
    return this.termAbort.signal;
  }

  canAct(): boolean {
    return this.leading && !this.stopped && now() < this.lastRenew + this.o.renewDeadlineMs;
  }

  actUntil(): number {
    return this.canAct() ? Date.now() + (this.lastRenew + this.o.renewDeadlineMs - now()) : -Infinity;
  }

  /** Able to lead: the lease store answered within the last LEASE_DURATION (readiness of a follower). */
  get canLead(): boolean {
    return !this.stopped && now() - this.lastContact < this.o.leaseDurationMs;
  }

  async start(): Promise<void> {
    this.o.log.info('Attempting to acquire leader lease', {
      backend: this.o.backend.label,
      lease: this.o.backend.where,
      identity: this.o.candidate.identity,
      lease_duration_ms: this.o.leaseDurationMs,
      renew_deadline_ms: this.o.renewDeadlineMs,
      retry_period_ms: this.o.retryPeriodMs,
    });
    this.o.backend.watch(() => {
      if (!this.leading && !this.stopped) this.schedule(0);
    });
    await this.tick();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private get renewDeadlineAt(): number {
    return this.lastRenew + this.o.renewDeadlineMs;
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    if (this.ticking) {
      this.tickAgain = true;
      return;
    }
    this.ticking = true;
    const started = now();
    const term = this.term;
    const wasLeading = this.leading;
    const deadline = this.leading ? this.renewDeadlineAt : started + this.o.renewDeadlineMs;
    try {
      const attempt = await this.request(deadline, (signal) => this.o.backend.acquireOrRenew(wasLeading, signal));
      this.lastContact = now();
      if (this.stopped || term !== this.term) {
        // stepped down (or stopped) while the attempt ran: its outcome is stale
      } else if (attempt.ok && now() < deadline) {
        this.lastRenew = started;
        this.armDeadline();
        if (!this.leading) {
          this.leading = true;
          this.term++;
          this.token = attempt.fencingToken;
          this.termAbort = new AbortController();
          this.o.log.info(`Successfully acquired leader lease via ${this.o.backend.label}`, {
            identity: this.o.candidate.identity,
            lease: this.o.backend.where,
            fencing_token: attempt.fencingToken,
          });
          this.o.log.info('This agent is the LEADER');
          this.knownLeader = `${this.o.candidate.identity}#${this.o.candidate.nonce}`;
          this.o.metrics?.leaderStatus.set({ agent_id: this.o.agentId }, 1);
          await this.o.onStartedLeading();
        }
      } else if (attempt.ok) {
        this.o.log.warn('lease write succeeded only after RENEW_DEADLINE; not counting it', { took_ms: Math.round(now() - started) });
      } else {
        if (this.leading) await this.stepDown('another replica holds the lease');
        this.announce(attempt.holder, attempt.holderNonce);
      }
    } catch (err) {
      this.o.log.warn('lease update failed', { error: (err as Error).message, leading: this.leading, backend: this.o.backend.label });
      if (this.leading && term === this.term && now() >= this.renewDeadlineAt) await this.stepDown('could not renew within RENEW_DEADLINE');
    } finally {
      this.ticking = false;
    }
    if (this.tickAgain) {
      this.tickAgain = false;
      this.schedule(0);
    } else this.schedule(this.o.retryPeriodMs);
  }

  /** One lease call, cut off at min(RETRY_PERIOD, the deadline); a step-down or stop aborts it too. */
  private async request<T>(deadline: number, call: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const budget = Math.min(this.o.retryPeriodMs, deadline - now());
    if (budget <= 0) throw new Error('no time left before the renew deadline');
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new Error(`lease call timed out after ${Math.round(budget)} ms`)), budget);
    this.inflight.add(ac);
    try {
      return await abortable(call(ac.signal), ac.signal);
    } finally {
      clearTimeout(timer);
      this.inflight.delete(ac);
    }
  }

  /** Steps the leader down RENEW_DEADLINE after its last successful renew, even while a call hangs. */
  private armDeadline(): void {
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = setTimeout(
      () => {
        this.deadlineTimer = null;
        if (this.leading && now() >= this.renewDeadlineAt) void this.stepDown('could not renew within RENEW_DEADLINE');
        else if (this.leading) this.armDeadline();
      },
      Math.max(0, this.renewDeadlineAt - now()),
    );
  }

  /** Stops acting first (fence, driver, control-plane connection), then gives the lease back if it can. */
  private async stepDown(why: string): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    this.term++;
    this.termAbort.abort(new Error(`stepped down: ${why}`));
    this.o.metrics?.leaderStatus.set({ agent_id: this.o.agentId }, 0);
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
    for (const ac of this.inflight) ac.abort(new Error('stepped down'));
    this.o.log.warn('Lost leadership: stopped leading', {
      reason: why,
      identity: this.o.candidate.identity,
      fencing_token: this.token,
      since_last_renew_ms: Math.round(now() - this.lastRenew),
      renew_deadline_ms: this.o.renewDeadlineMs,
    });
    this.knownLeader = '';
    await this.o.onStoppedLeading();
    // Stopped acting: give the lease back if it is still ours (compare-and-delete), so that a
    // follower need not wait for it to expire.
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new Error('release timed out')), this.o.retryPeriodMs);
    await abortable(this.o.backend.release(ac.signal), ac.signal)
      .catch(() => false)
      .finally(() => clearTimeout(timer));
    this.o.log.info('This agent is no longer the leader; campaigning as a candidate');
  }

  private announce(holder: string | null, nonce: string | null): void {
    const key = holder ? `${holder}#${nonce ?? ''}` : '';
    if (key === this.knownLeader) return;
    this.knownLeader = key;
    if (holder) this.o.log.info(`This agent is a FOLLOWER (leader: ${holder})`);
  }

  /** Stops campaigning; a leader stops acting, then releases the lease so a follower takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    for (const ac of this.inflight) ac.abort(new Error('leader election stopped'));
    if (this.leading) {
      this.leading = false;
      this.term++;
      this.termAbort.abort(new Error('agent stopping'));
      this.o.metrics?.leaderStatus.set({ agent_id: this.o.agentId }, 0);
      await this.o.onStoppedLeading();
      const ac = new AbortController();
      const timer = setTimeout(() => ac.abort(new Error('release timed out')), this.o.renewDeadlineMs);
      try {
        if (await abortable(this.o.backend.release(ac.signal), ac.signal)) this.o.log.info('Released leader lease', { backend: this.o.backend.label });
      } catch (err) {
        this.o.log.warn('could not release the lease (it will expire)', { error: (err as Error).message });
      } finally {
        clearTimeout(timer);
      }
    }
    await this.o.backend.close().catch(() => undefined);
  }
}

/** A random nonce: the lease is held by this process, not by whatever else runs under the same identity. */
export const newCandidate = (identity: string): Candidate => ({ identity, nonce: randomBytes(6).toString('hex') });

/**
 * The driver as only the lease holder may use it: start, hibernate, wake and stop (including the
 * runtime's undo) refuse unless the fence says this process may act, and the context they hand the
 * driver expires (its `deadline` getter) and aborts (`signal`) when the lease is no longer proven,
 * so a driver's own mustNotProceed checks before each irreversible step honour the lease too. A
 * refusal is retryable: the control plane retries the command on the new leader. Reads (list,
 * vncEndpoint, vncPassword) pass through.
 */
export class FencedDriver implements SessionDriver {
  readonly platform: SessionDriver['platform'];
  vncPassword?: (sessionId: string) => Promise<string | null>;

  constructor(
    readonly inner: SessionDriver,
    private readonly fence: Fence,
  ) {
    this.platform = inner.platform;
    if (hasVncSecrets(inner)) this.vncPassword = (id) => inner.vncPassword(id);
  }

  private refused(what: string): DriverError {
    return new DriverError(`not the leader any more (the HA lease is lost or not proven within RENEW_DEADLINE): refused to ${what}`, true);
  }

  private async guarded<T>(what: string, ctx: CommandContext | undefined, fn: (ctx: CommandContext) => Promise<T>): Promise<T> {
    const fence = this.fence;
    if (!fence.canAct()) throw this.refused(what);
    const base = ctx ?? { generation: 0, signal: new AbortController().signal, deadline: Infinity };
    const fenced: CommandContext = {
      generation: base.generation,
      signal: AbortSignal.any([base.signal, fence.signal]),
      get deadline() {
        return Math.min(base.deadline, fence.actUntil());
      },
    };
    try {
      return await fn(fenced);
    } catch (err) {
      if (!fence.canAct()) throw this.refused(`${what} (${(err as Error).message})`);
      throw err;
    }
  }

  init(): Promise<void> {
    return this.inner.init();
  }
  start(sessionId: string, data: StartSessionData, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    return this.guarded(`start session ${sessionId}`, ctx, (c) => this.inner.start(sessionId, data, progress, c));
  }
  hibernate(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    return this.guarded(`hibernate session ${sessionId}`, ctx, (c) => this.inner.hibernate(sessionId, progress, c));
  }
  wake(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    return this.guarded(`wake session ${sessionId}`, ctx, (c) => this.inner.wake(sessionId, progress, c));
  }
  stop(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    return this.guarded(`stop session ${sessionId}`, ctx, (c) => this.inner.stop(sessionId, progress, c));
  }
  list(): Promise<ReportedSession[]> {
    return this.inner.list();
  }
  vncEndpoint(sessionId: string): Promise<VncEndpoint> {
    return this.inner.vncEndpoint(sessionId);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
