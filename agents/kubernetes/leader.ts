/**
 * Leader election on a coordination.k8s.io/v1 Lease (the client-go algorithm): candidates try to
 * acquire or renew every RETRY_PERIOD; a holder that has not renewed for LEASE_DURATION (as
 * observed locally, so clocks need not agree) is replaced; a leader that cannot renew within
 * RENEW_DEADLINE steps down. Followers also watch the Lease, so a graceful release (SIGTERM)
 * hands over at once instead of after a retry period.
 */
import { CoordinationV1Api, KubeConfig, V1Lease, V1MicroTime, Watch } from '@kubernetes/client-node';
import type { Logger } from '../../config/log';

export interface LeaderElectionOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  log: Logger;
  onStartedLeading: () => void | Promise<void>;
  onStoppedLeading: () => void | Promise<void>;
  onNewLeader?: (identity: string) => void;
}

const status = (err: unknown) => (err as { code?: number }).code;
/** Lease times are MicroTime: the API server refuses millisecond timestamps, so wrap every Date. */
const micro = (d: Date | undefined = new Date()) => new V1MicroTime(d.getTime());

export class LeaderElector {
  private readonly api: CoordinationV1Api;
  private leading = false;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private watchAbort: AbortController | null = null;
  /** The last lease record seen and when we saw it change (local clock). */
  private observed: { holder: string; renew: string; at: number } | null = null;
  private lastRenew = 0;
  private knownLeader = '';

  constructor(private readonly o: LeaderElectionOptions) {
    this.api = o.kubeConfig.makeApiClient(CoordinationV1Api);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  async start(): Promise<void> {
    this.o.log.info('Attempting to acquire leader lease', { lease: `${this.o.namespace}/${this.o.name}`, identity: this.o.identity });
    void this.watch();
    await this.tick();
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.tick(), ms);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    try {
      const ok = await this.tryAcquireOrRenew();
      if (ok) {
        this.lastRenew = Date.now();
        if (!this.leading) {
          this.leading = true;
          this.o.log.info('Successfully acquired leader lease', { identity: this.o.identity });
          this.o.log.info('This agent is the LEADER');
          this.announce(this.o.identity);
          await this.o.onStartedLeading();
        }
      } else if (this.leading) {
        await this.stepDown('another replica holds the lease');
      }
    } catch (err) {
      this.o.log.warn('lease update failed', { error: (err as Error).message });
      if (this.leading && Date.now() - this.lastRenew > this.o.renewDeadlineMs) await this.stepDown('could not renew within RENEW_DEADLINE');
    }
    this.schedule(this.o.retryPeriodMs);
  }

  private async stepDown(why: string): Promise<void> {
    this.leading = false;
    this.o.log.warn('Lost leadership', { reason: why });
    await this.o.onStoppedLeading();
  }

  private announce(holder: string): void {
    if (holder === this.knownLeader) return;
    this.knownLeader = holder;
    if (holder && holder !== this.o.identity) this.o.log.info(`This agent is a FOLLOWER (leader: ${holder})`);
    this.o.onNewLeader?.(holder);
  }

  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity } = this.o;
    const now = micro();
    let lease: V1Lease;
    try {
      lease = await this.api.readNamespacedLease({ name, namespace });
    } catch (err) {
      if (status(err) !== 404) throw err;
      try {
        await this.api.createNamespacedLease({
          namespace,
          body: {
            metadata: { name, namespace },
            spec: {
              holderIdentity: identity,
              leaseDurationSeconds: Math.ceil(this.o.leaseDurationMs / 1000),
              acquireTime: now,
              renewTime: now,
              leaseTransitions: 0,
            },
          },
        });
        return true;
      } catch (createErr) {
        if (status(createErr) === 409) return false; // another replica created it first
        throw createErr;
      }
    }
    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    const renew = spec.renewTime ? new Date(spec.renewTime).toISOString() : '';
    if (!this.observed || this.observed.holder !== holder || this.observed.renew !== renew) {
      this.observed = { holder, renew, at: Date.now() };
    }
    const expired = !holder || Date.now() > this.observed.at + (spec.leaseDurationSeconds ?? 15) * 1000;
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
      renewTime: now,
      ...(takingOver ? { acquireTime: now, leaseTransitions: (spec.leaseTransitions ?? 0) + 1 } : {}),
    };
    try {
      // resourceVersion in metadata makes this a compare-and-swap: two candidates cannot both win.
      await this.api.replaceNamespacedLease({ name, namespace, body: lease });
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
    this.watchAbort?.abort();
    if (!this.leading) return;
    this.leading = false;
    await this.o.onStoppedLeading();
    try {
      const lease = await this.api.readNamespacedLease({ name: this.o.name, namespace: this.o.namespace });
      if (lease.spec?.holderIdentity === this.o.identity) {
        lease.spec = {
          ...lease.spec,
          acquireTime: lease.spec.acquireTime ? micro(new Date(lease.spec.acquireTime)) : undefined,
          holderIdentity: undefined,
          leaseDurationSeconds: 1,
          renewTime: micro(),
        };
        await this.api.replaceNamespacedLease({ name: this.o.name, namespace: this.o.namespace, body: lease });
        this.o.log.info('Released leader lease');
      }
    } catch (err) {
      this.o.log.warn('could not release the lease (it will expire)', { error: (err as Error).message });
    }
  }
}
