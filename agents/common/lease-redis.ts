/**
 * HA_BACKEND=redis: the leader lease is one Redis key per agent id,
 *   lease:docker-agent-leader:<AGENT_ID> → {"holder","nonce","fencing_token","acquired","lease_duration_ms"}  (PX LEASE_DURATION)
 * (the spec's key, scoped by AGENT_ID: two agent ids are two Docker engines, each needs its own
 * leader; one key for all would leave every engine but the leader's unmanaged), with
 *   lease:docker-agent-leader:<AGENT_ID>:fencing-token  the fencing counter (INCR on every acquisition)
 *   lease:docker-agent-leader:<AGENT_ID>:released       the channel a release is published on.
 *
 * Every change is one Lua script, so it is atomic: acquire is SET NX PX (only when the key is
 * absent) together with the INCR; renew and release compare the whole stored value (holder and this
 * process's nonce) before PEXPIRE or DEL — never a blind SET or DEL. The fencing counter is floored
 * at the acquiring process's wall clock (ms), so it keeps growing even if Redis lost the counter
 * (a FLUSHALL, a restart without persistence): the gateway never sees a newer leader with a smaller
 * token than an older one. Needs one Redis (a primary; not Redis Cluster: the keys are not in one
 * hash slot). A Redis failover to a replica that missed the last write can lose the lease: the
 * new leader's token is still larger, which the gateway checks.
 */
import Redis from 'ioredis';
import type { Logger } from '../../config/log';
import { abortable, Candidate, LeaseAttempt, LeaseBackend } from './ha';

export const redisLeaseKey = (agentId: string) => `lease:docker-agent-leader:${agentId}`;

/** KEYS: lease, counter. ARGV: holder, nonce, floor (ms), acquired (ISO), lease ms. → {1, value, token} | {0, current value} */
const ACQUIRE = `
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local t = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if t < floor then
  redis.call('SET', KEYS[2], ARGV[3])
  t = floor
end
local v = cjson.encode({holder = ARGV[1], nonce = ARGV[2], fencing_token = t, acquired = ARGV[4], lease_duration_ms = tonumber(ARGV[5])})
if not redis.call('SET', KEYS[1], v, 'PX', ARGV[5], 'NX') then return {0, ''} end
return {1, v, t}
`;
/** KEYS: lease. ARGV: our value, lease ms. → 1 renewed | 0 not ours (the current value second). */
const RENEW = `
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, cur}
end
return {0, cur or ''}
`;
/** KEYS: lease. ARGV: our value, channel. → 1 released | 0 not ours. */
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[1])
  return 1
end
return 0
`;

interface LeaseValue {
  holder?: string;
  nonce?: string;
  fencing_token?: number;
}

const parse = (v: string | null | undefined): LeaseValue => {
  if (!v) return {};
  try {
    return JSON.parse(v) as LeaseValue;
  } catch {
    return { holder: v };
  }
};

export class RedisLease implements LeaseBackend {
  readonly label = 'Redis';
  readonly where: string;
  private readonly key: string;
  private readonly counterKey: string;
  private readonly channel: string;
  private readonly redis: Redis;
  private sub: Redis | null = null;
  /** The exact value we stored while we hold the lease (compare-and-set operand). */
  private mine: string | null = null;
  private mineToken = 0;

  constructor(
    url: string,
    agentId: string,
    private readonly me: Candidate,
    private readonly leaseDurationMs: number,
    private readonly callTimeoutMs: number,
    private readonly log: Logger,
  ) {
    this.key = redisLeaseKey(agentId);
    this.counterKey = `${this.key}:fencing-token`;
    this.channel = `${this.key}:released`;
    this.where = this.key;
    this.redis = new Redis(url, this.options());
    this.redis.on('error', (err) => this.log.debug('redis (lease) error', { error: err.message }));
    this.redis.defineCommand('leaseAcquire', { numberOfKeys: 2, lua: ACQUIRE });
    this.redis.defineCommand('leaseRenew', { numberOfKeys: 1, lua: RENEW });
    this.redis.defineCommand('leaseRelease', { numberOfKeys: 1, lua: RELEASE });
  }

  private options() {
    return {
      // Fail fast rather than queue behind a dead connection; the elector retries every RETRY_PERIOD.
      maxRetriesPerRequest: 1,
      connectTimeout: Math.max(1000, this.callTimeoutMs),
      commandTimeout: this.callTimeoutMs,
      retryStrategy: (n: number) => Math.min(50 * 2 ** n, 1000),
      lazyConnect: false,
    };
  }

  private run(name: 'leaseAcquire' | 'leaseRenew' | 'leaseRelease', args: (string | number)[], signal: AbortSignal): Promise<unknown> {
    const r = this.redis as unknown as Record<string, (...a: (string | number)[]) => Promise<unknown>>;
    return abortable(r[name](...args), signal);
  }

  async acquireOrRenew(leading: boolean, signal: AbortSignal): Promise<LeaseAttempt> {
    if (leading && this.mine) {
      const [ok, cur] = (await this.run('leaseRenew', [this.key, this.mine, this.leaseDurationMs], signal)) as [number, string];
      if (ok === 1) return { ok: true, fencingToken: this.mineToken };
      this.mine = null;
      const v = parse(cur);
      return { ok: false, holder: v.holder ?? null, holderNonce: v.nonce ?? null };
    }
    const res = (await this.run(
      'leaseAcquire',
      [this.key, this.counterKey, this.me.identity, this.me.nonce, Date.now(), new Date().toISOString(), this.leaseDurationMs],
      signal,
    )) as [number, string, number?];
    if (res[0] === 1) {
      this.mine = res[1];
      this.mineToken = Number(res[2]);
      return { ok: true, fencingToken: this.mineToken };
    }
    const v = parse(res[1]);
    return { ok: false, holder: v.holder ?? null, holderNonce: v.nonce ?? null };
  }

  async release(signal: AbortSignal): Promise<boolean> {
    if (!this.mine) return false;
    const mine = this.mine;
    this.mine = null;
    return (await this.run('leaseRelease', [this.key, mine, this.channel], signal)) === 1;
  }

  watch(onChange: () => void): void {
    this.sub = new Redis(this.redis.options);
    this.sub.on('error', (err) => this.log.debug('redis (lease watch) error', { error: err.message }));
    this.sub.on('message', (channel) => {
      if (channel === this.channel) onChange();
    });
    this.sub.subscribe(this.channel).catch((err: Error) => this.log.warn('cannot watch the lease for releases (polling only)', { error: err.message }));
  }

  async close(): Promise<void> {
    this.sub?.disconnect();
    this.redis.disconnect();
  }
}
