/**
 * Leader election on a coordination.k8s.io/v1 Lease (the client-go algorithm): candidates try to
 * acquire or renew every RETRY_PERIOD; a holder that has not renewed for LEASE_DURATION (as
 * observed locally, so clocks need not agree) is replaced; a leader that cannot renew within
 * RENEW_DEADLINE steps down. Followers also watch the Lease, so a graceful release (SIGTERM)
 * hands over at once instead of after a retry period.
 *
 * Why a leader can never overlap a follower's take-over: every Lease request carries a timeout (at
 * most RETRY_PERIOD, and never past the current renew deadline), and a timer steps the leader down
 * RENEW_DEADLINE after the start of its last successful renew, even while a request still hangs.
 * A follower takes over only LEASE_DURATION after it saw that renew (which it cannot see before the
 * renew started), and RENEW_DEADLINE < LEASE_DURATION. All durations use the monotonic clock.
 */
import { performance } from 'node:perf_hooks';
import {
  type ConfigurationOptions,
  CoordinationV1Api,
  KubeConfig,
  Observable,
  type ObservableMiddleware,
  V1Lease,
  V1MicroTime,
  Watch,
} from '@kubernetes/client-node';
import type { Logger } from '../../config/log';

export interface LeaderTimings {
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
}

export interface LeaderElectionOptions extends LeaderTimings {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  identity: string;
  log: Logger;
  onStartedLeading: () => void | Promise<void>;
  onStoppedLeading: () => void | Promise<void>;
  onNewLeader?: (identity: string) => void;
}

/** client-go's JitterFactor: RENEW_DEADLINE must leave room for more than one retry. */
const JITTER_FACTOR = 1.2;

/** Throws a clear error unless LEASE_DURATION > RENEW_DEADLINE > 1.2 × RETRY_PERIOD > 0 (client-go's rules). */
export function validateLeaderTimings(t: LeaderTimings): void {
  const problems: string[] = [];
  for (const [name, v] of [
    ['LEASE_DURATION', t.leaseDurationMs],
    ['RENEW_DEADLINE', t.renewDeadlineMs],
    ['RETRY_PERIOD', t.retryPeriodMs],
  ] as const) {
    if (!Number.isFinite(v) || v <= 0) problems.push(`${name} must be a positive duration (got ${v} ms)`);
  }
  if (!problems.length && t.renewDeadlineMs >= t.leaseDurationMs)
    problems.push(
      `RENEW_DEADLINE (${t.renewDeadlineMs} ms) must be shorter than LEASE_DURATION (${t.leaseDurationMs} ms): ` +
        'a leader must stop acting before a follower may take the lease over',
    );
  if (!problems.length && t.renewDeadlineMs <= JITTER_FACTOR * t.retryPeriodMs)
    problems.push(`RENEW_DEADLINE (${t.renewDeadlineMs} ms) must be longer than ${JITTER_FACTOR} × RETRY_PERIOD (${t.retryPeriodMs} ms)`);
  if (problems.length) throw new Error(`invalid leader election settings: ${problems.join('; ')}`);
}

const status = (err: unknown) => (err as { code?: number }).code;
/** Lease times are MicroTime: the API server refuses millisecond timestamps, so wrap every Date. */
const micro = (d: Date | undefined = new Date()) => new V1MicroTime(d.getTime());
/** Monotonic milliseconds: wall-clock steps never shorten or stretch a deadline. */
const now = () => performance.now();

/** Per-request options that attach an AbortSignal to the client's fetch. */
const withSignal = (signal: AbortSignal): ConfigurationOptions<ObservableMiddleware> => ({
  middleware: [
    {
      pre: (ctx) => {
        ctx.setSignal(signal);
        return new Observable(Promise.resolve(ctx));
      },
      post: (res) => new Observable(Promise.resolve(res)),
    },
  ],
  middlewareMergeStrategy: 'append',
});

export class LeaderElector {
  private readonly api: CoordinationV1Api;
  private leading = false;
  private stopped = false;
  /** Bumped on every step up and step down: an attempt that straddles one does not count. */
  private term = 0;
  private timer: NodeJS.Timeout | null = null;
  private deadlineTimer: NodeJS.Timeout | null = null;
  private watchAbort: AbortController | null = null;
  /** Lease requests in flight, aborted when the leader steps down or the elector stops. */
  private readonly inflight = new Set<AbortController>();
  private ticking = false;
  private tickAgain = false;
  /** The last lease record seen and when we saw it change (monotonic local clock). */
  private observed: { holder: string; renew: string; at: number } | null = null;
  /** When the last successful acquire/renew attempt started (monotonic); the deadline runs from here. */
  private lastRenew = 0;
  /** When an attempt last got an answer from the API server (monotonic), leading or not. */
  private lastContact = -Infinity;
  private knownLeader = '';

  constructor(private readonly o: LeaderElectionOptions) {
    validateLeaderTimings(o);
    this.api = o.kubeConfig.makeApiClient(CoordinationV1Api);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /**
   * Able to lead: the Lease API answered within the last LEASE_DURATION (a follower that cannot
   * reach it could not take over). Readiness of an HA replica, leader or follower.
   */
  get canLead(): boolean {
    return !this.stopped && now() - this.lastContact < this.o.leaseDurationMs;
  }

  async start(): Promise<void> {
    this.o.log.info('Attempting to acquire leader lease', {
      lease: `${this.o.namespace}/${this.o.name}`,
      identity: this.o.identity,
      lease_duration_ms: this.o.leaseDurationMs,
      renew_deadline_ms: this.o.renewDeadlineMs,
      retry_period_ms: this.o.retryPeriodMs,
    });
    void this.watch();
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
      this.tickAgain = true; // one attempt at a time; run again as soon as this one ends
      return;
    }
    this.ticking = true;
    const started = now();
    const term = this.term;
    // A successful attempt is only worth something until RENEW_DEADLINE after it started (and a
    // leader's, not past its current deadline): requests are cut off there.
    const deadline = this.leading ? this.renewDeadlineAt : started + this.o.renewDeadlineMs;
    try {
      const ok = await this.tryAcquireOrRenew(deadline);
      this.lastContact = now();
      if (this.stopped || term !== this.term) {
        // Stepped down (or stopped) while the attempt ran: its outcome is stale.
      } else if (ok && now() < deadline) {
        this.lastRenew = started;
        this.armDeadline();
        if (!this.leading) {
          this.leading = true;
          this.term++;
          this.o.log.info('Successfully acquired leader lease', { identity: this.o.identity });
          this.o.log.info('This agent is the LEADER');
          this.announce(this.o.identity);
          await this.o.onStartedLeading();
        }
      } else if (ok) {
        this.o.log.warn('lease write succeeded only after RENEW_DEADLINE; not counting it', { took_ms: Math.round(now() - started) });
      } else if (this.leading) {
        await this.stepDown('another replica holds the lease');
      }
    } catch (err) {
      this.o.log.warn('lease update failed', { error: (err as Error).message, leading: this.leading });
      // The deadline timer steps a leader down; this only covers a timer that has not fired yet.
      if (this.leading && term === this.term && now() >= this.renewDeadlineAt) await this.stepDown('could not renew within RENEW_DEADLINE');
    } finally {
      this.ticking = false;
    }
    if (this.tickAgain) {
      this.tickAgain = false;
      this.schedule(0);
    } else this.schedule(this.o.retryPeriodMs);
  }

  /** Steps the leader down RENEW_DEADLINE after its last successful renew, even while a request hangs. */
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

  private async stepDown(why: string): Promise<void> {
    if (!this.leading) return;
    this.leading = false;
    this.term++;
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.deadlineTimer = null;
    for (const ac of this.inflight) ac.abort(new Error('stepped down'));
    this.o.log.warn('Lost leadership: stopped leading', {
      reason: why,
      identity: this.o.identity,
      since_last_renew_ms: Math.round(now() - this.lastRenew),
      renew_deadline_ms: this.o.renewDeadlineMs,
    });
    this.knownLeader = '';
    await this.o.onStoppedLeading();
    this.o.log.info('This agent is no longer the leader; campaigning as a candidate');
  }

  private announce(holder: string): void {
    if (holder === this.knownLeader) return;
    this.knownLeader = holder;
    if (holder && holder !== this.o.identity) this.o.log.info(`This agent is a FOLLOWER (leader: ${holder})`);
    this.o.onNewLeader?.(holder);
  }

  /**
   * Runs one Lease request with a timeout of at most RETRY_PERIOD, cut short at `deadline`
   * (monotonic ms); a leader stepping down or the elector stopping aborts it too.
   */
  private async request<T>(what: string, deadline: number, call: (opts: ConfigurationOptions<ObservableMiddleware>) => Promise<T>): Promise<T> {
    const budget = Math.min(this.o.retryPeriodMs, deadline - now());
    if (budget <= 0) throw new Error(`${what}: no time left before the renew deadline`);
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(new Error(`${what} timed out after ${Math.round(budget)} ms`)), budget);
    this.inflight.add(ac);
    try {
      return await call(withSignal(ac.signal));
    } catch (err) {
      if (ac.signal.aborted) throw ac.signal.reason instanceof Error ? ac.signal.reason : new Error(`${what} aborted`);
      throw err;
    } finally {
      clearTimeout(timer);
      this.inflight.delete(ac);
    }
  }

  private async tryAcquireOrRenew(deadline: number): Promise<boolean> {
    const { namespace, name, identity } = this.o;
    const at = micro();
    let lease: V1Lease;
    try {
      lease = await this.request('get lease', deadline, (opts) => this.api.readNamespacedLease({ name, namespace }, opts));
    } catch (err) {
      if (status(err) !== 404) throw err;
      try {
        await this.request('create lease', deadline, (opts) =>
          this.api.createNamespacedLease(
            {
              namespace,
              body: {
                metadata: { name, namespace },
                spec: {
                  holderIdentity: identity,
                  leaseDurationSeconds: Math.ceil(this.o.leaseDurationMs / 1000),
                  acquireTime: at,
                  renewTime: at,
                  leaseTransitions: 0,
                },
              },
            },
            opts,
          ),
        );
        return true;
      } catch (createErr) {
        if (status(createErr) === 409) return false; // another replica created it first
        throw createErr;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const renew = spec.renewTime ? new Date(spec.renewTime).toISOString() : '';
    // Expiry is judged by when *we* saw the record change, never by the holder's timestamps.
    if (!this.observed || this.observed.holder !== holder || this.observed.renew !== renew) {
      this.observed = { holder, renew, at: now() };
    }
    const expired = !holder || now() > this.observed.at + (spec.leaseDurationSeconds ?? 15) * 1000;
    if (holder !== identity && !expired) {
      this.announce(holder);
      return false;
    }
    const takingOver = holder !== identity;
    lease.spec = {
      ...spec,
      ...(spec.acquireTime ? { acquireTime: micro(new Date(spec.acquireTime)) } : {}),
      holderIdentity: identity,
      leaseDurationSeconds: Math.ceil(this.o.leaseDurationMs / 1000),
      renewTime: at,
      ...(takingOver ? { acquireTime: at, leaseTransitions: (spec.leaseTransitions ?? 0) + 1 } : {}),
    };
    try {
      // resourceVersion in metadata makes this a compare-and-swap: two candidates cannot both win.
      await this.request('update lease', deadline, (opts) => this.api.replaceNamespacedLease({ name, namespace, body: lease }, opts));
      return true;
    } catch (err) {
      if (status(err) === 409) return false;
      throw err;
    }
  }

  /** Followers react to lease changes at once (a released lease is taken without waiting). */
  private async watch(): Promise<void> {
    if (this.stopped) return;
    const path = `/apis/coordination.k8s.io/v1/namespaces/${this.o.namespace}/leases`;
    try {
      this.watchAbort = await new Watch(this.o.kubeConfig).watch(
        path,
        { fieldSelector: `metadata.name=${this.o.name}` },
        (_phase, obj: V1Lease) => {
          const holder = obj?.spec?.holderIdentity ?? '';
          if (!this.leading && !holder)
            this.schedule(0); // released: try now
          else if (holder && !this.leading) this.announce(holder);
        },
        () => {
          if (!this.stopped) setTimeout(() => void this.watch(), this.o.retryPeriodMs);
        },
      );
    } catch {
      if (!this.stopped) setTimeout(() => void this.watch(), this.o.retryPeriodMs);
    }
  }

  /** Stops campaigning; a leader releases the lease so a follower takes over immediately. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.deadlineTimer) clearTimeout(this.deadlineTimer);
    this.watchAbort?.abort();
    for (const ac of this.inflight) ac.abort(new Error('leader election stopped'));
    if (!this.leading) return;
    this.leading = false;
    this.term++;
    await this.o.onStoppedLeading();
    const { name, namespace } = this.o;
    const deadline = now() + this.o.renewDeadlineMs;
    try {
      const lease = await this.request('get lease', deadline, (opts) => this.api.readNamespacedLease({ name, namespace }, opts));
      if (lease.spec?.holderIdentity === this.o.identity) {
        lease.spec = {
          ...lease.spec,
          acquireTime: lease.spec.acquireTime ? micro(new Date(lease.spec.acquireTime)) : undefined,
          holderIdentity: undefined,
          leaseDurationSeconds: 1,
          renewTime: micro(),
        };
        await this.request('release lease', deadline, (opts) => this.api.replaceNamespacedLease({ name, namespace, body: lease }, opts));
        this.o.log.info('Released leader lease');
      }
    } catch (err) {
      this.o.log.warn('could not release the lease (it will expire)', { error: (err as Error).message });
    }
  }
}
