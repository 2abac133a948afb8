/**
 * AgentHub for several API pods (AGENT_HUB_BACKEND=redis).
 *
 * Each pod keeps its own agent sockets (a MemoryAgentHub) and advertises them in Redis:
 *   streamspace:agent:<agentDbId> → {"podId","connId","agentId"}  (PX ttl, refreshed while attached)
 * and listens on its own channel streamspace:pod:<podId>. sendToAgent delivers locally when it can,
 * otherwise looks up the owning pod and PUBLISHes {agentDbId, msg} to that pod's channel; the owner
 * validates the message and writes it to its local socket. A newer connection of the same agent on
 * another pod evicts the stale one ({agentDbId, evict: connId}).
 *
 * Pod messages are authenticated: they travel in an envelope {v, ts, p, sig} with
 * sig = HMAC-SHA256(key, "msg" \n channel \n ts \n p). The key is AGENT_HUB_SECRET, else
 * HKDF-SHA256 of AGENT_TOKEN_SECRET (else JWT_SECRET); all pods derive the same. Unsigned,
 * forged, stale (> 30 s) or other-channel messages are dropped, counted and logged, so whoever can
 * write to Redis cannot make a pod write to an agent socket (steal streams or evict agents). A
 * forged location key only misroutes signed messages to a channel where no pod accepts them (it
 * could as well delete keys): denial of service, which Redis' password (requirepass) guards.
 *
 * Nothing here is durable: commands travel through PostgreSQL (command log + NOTIFY), so a Redis
 * outage only delays control messages that are not commands (today: the VNC tunnel's open_stream);
 * keys are re-asserted on every refresh and after Redis comes back.
 */
import { createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import Redis from 'ioredis';
import { envOptional } from '../../config/env';
import type { Logger } from '../../config/log';
import { CloseCode, ControlPlaneMessage, encode, parseControlPlaneMessage } from '../../protocol/messages';
import type { Metrics } from '../metrics';
import { AgentConnection, AgentHub, MemoryAgentHub } from './hub';

export const AGENT_KEY_PREFIX = 'streamspace:agent:';
export const POD_CHANNEL_PREFIX = 'streamspace:pod:';
export const agentKey = (agentDbId: string) => AGENT_KEY_PREFIX + agentDbId;
export const podChannel = (podId: string) => POD_CHANNEL_PREFIX + podId;

export interface AgentLocation {
  podId: string;
  connId: string;
  agentId: string;
}

export interface RedisAgentHubOptions {
  url: string;
  podId: string;
  log: Logger;
  metrics?: Pick<Metrics, 'redisConnection'>;
  /** Lifetime of an agent's location key; refreshed every ttlMs/3 while the socket is attached. */
  ttlMs?: number;
  /** Per attempt, when connecting at start-up and on reconnects. */
  connectTimeoutMs?: number;
  /** HMAC key for messages and locations; default hubSecretFromEnv(). Every pod needs the same. */
  secret?: Buffer | string;
}

/** Used (by every hub in this process) when no secret is configured. */
let fallbackKey: Buffer | undefined;

/** Relayed messages older (or newer) than this are dropped as replays. */
const MAX_MESSAGE_AGE_MS = 30_000;

/**
 * The hub's HMAC key: AGENT_HUB_SECRET, else derived (HKDF-SHA256) from AGENT_TOKEN_SECRET or
 * JWT_SECRET, so pods configured alike agree without another setting. null when none is set.
 */
export function hubSecretFromEnv(env: NodeJS.ProcessEnv = process.env): Buffer | null {
  const explicit = envOptional('AGENT_HUB_SECRET', env);
  if (explicit) {
    if (explicit.length < 16) throw new Error('AGENT_HUB_SECRET must be at least 16 characters');
    return Buffer.from(explicit);
  }
  const base = envOptional('AGENT_TOKEN_SECRET', env) ?? envOptional('JWT_SECRET', env);
  if (!base) return null;
  return Buffer.from(hkdfSync('sha256', base, 'streamspace', 'agent-hub-hmac-v1', 32));
}

/** Sets the key to ARGV[3] unless it names another connection (refresh, or re-create after loss). */
const REFRESH_SCRIPT = `
local v = redis.call('GET', KEYS[1])
if v then
  local ok, o = pcall(cjson.decode, v)
  if not (ok and type(o) == 'table' and o.podId == ARGV[1] and o.connId == ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1`;

/**
 * REFRESH_SCRIPT for many keys in one command: ARGV[1] pod id, ARGV[2] ttl, then per key its
 * connection id and location. Returns how many keys named another connection (left alone).
 */
const REFRESH_MANY_SCRIPT = `
local skipped = 0
for i, key in ipairs(KEYS) do
  local conn, loc = ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  local v = redis.call('GET', key)
  local mine = true
  if v then
    local ok, o = pcall(cjson.decode, v)
    mine = ok and type(o) == 'table' and o.podId == ARGV[1] and o.connId == conn
  end
  if mine then redis.call('SET', key, loc, 'PX', ARGV[2]) else skipped = skipped + 1 end
end
return skipped`;

/** Keys per REFRESH_MANY_SCRIPT call (all calls of one refresh go in one pipeline, one round trip). */
const REFRESH_BATCH = 500;

/** Deletes the key only while it still names this pod's connection. */
const COMPARE_DELETE_SCRIPT = `
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, o = pcall(cjson.decode, v)
if ok and type(o) == 'table' and o.podId == ARGV[1] and o.connId == ARGV[2] then return redis.call('DEL', KEYS[1]) end
return 0`;

/** Sets the key and returns what it named before (SET … GET without needing Redis 6.2). */
const SWAP_SCRIPT = `
local old = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return old`;

interface ChannelMessage {
  agentDbId: string;
  msg?: unknown;
  evict?: string;
}

export class RedisAgentHub implements AgentHub {
  readonly backend = 'redis' as const;
  readonly podId: string;
  private readonly localHub = new MemoryAgentHub();
  private readonly pub: Redis;
  private readonly sub: Redis;
  private readonly ttlMs: number;
  private readonly channel: string;
  private readonly log: Logger;
  private refreshTimer: NodeJS.Timeout | null = null;
  private connected = false;
  private started = false;
  private closed = false;
  private everReady = { pub: false, sub: false };
  private lastError: Error | null = null;
  private errorLogged = false;
  private readonly key: Buffer;
  /** Pod messages dropped because they were unsigned, forged, stale or malformed. */
  rejectedMessages = 0;
  private rejectLoggedAt = 0;

  constructor(private readonly o: RedisAgentHubOptions) {
    this.podId = o.podId;
    this.log = o.log;
    this.ttlMs = o.ttlMs ?? 60_000;
    this.channel = podChannel(o.podId);
    const secret = o.secret ?? hubSecretFromEnv();
    if (secret) this.key = Buffer.isBuffer(secret) ? secret : Buffer.from(secret);
    else {
      // Verifies only within this process: other pods' messages are dropped (and logged) until
      // AGENT_HUB_SECRET or AGENT_TOKEN_SECRET is set alike on every pod.
      this.key = fallbackKey ??= randomBytes(32);
      this.log.warn('Redis AgentHub: no AGENT_HUB_SECRET / AGENT_TOKEN_SECRET; messages from other pods will be refused');
    }
    const common = {
      lazyConnect: true,
      connectTimeout: o.connectTimeoutMs ?? 5_000,
      // Fail a command after a few reconnect attempts instead of queueing it forever: callers
      // (the VNC tunnel) report "not connected" rather than hang.
      maxRetriesPerRequest: 3,
      // No retries until connect() has succeeded: an unreachable Redis fails start-up at once.
      retryStrategy: (times: number) => (this.started ? Math.min(100 * 2 ** Math.min(times, 6), 5_000) : null),
    };
    this.pub = new Redis(o.url, {
      ...common,
      connectionName: `streamspace-hub-pub-${o.podId}`,
    });
    this.sub = new Redis(o.url, {
      ...common,
      connectionName: `streamspace-hub-sub-${o.podId}`,
    });
    for (const [name, client] of [
      ['pub', this.pub],
      ['sub', this.sub],
    ] as const) {
      client.on('error', (err: Error) => {
        this.lastError = err;
        if (!this.errorLogged && this.everReady[name])
          this.log.warn('Redis AgentHub connection error', {
            connection: name,
            error: err.message,
          });
        this.errorLogged = true;
      });
      client.on('ready', () => {
        const reconnected = this.everReady[name];
        this.everReady[name] = true;
        this.updateStatus();
        if (reconnected) {
          this.log.info('Redis AgentHub reconnected', { connection: name });
          // Redis may have restarted empty: put this pod's agents back at once.
          if (name === 'pub') void this.refreshAll();
        }
      });
      client.on('close', () => this.updateStatus());
      client.on('end', () => this.updateStatus());
    }
    this.sub.on('message', (channel: string, payload: string) => {
      if (channel === this.channel) this.onChannelMessage(payload);
    });
  }

  /** Connects both Redis connections and subscribes this pod's channel; rejects (and gives up) when Redis is unreachable. */
  async connect(): Promise<this> {
    try {
      await Promise.all([this.pub.connect(), this.sub.connect()]);
      await this.sub.subscribe(this.channel);
      await this.pub.ping();
    } catch (err) {
      for (const c of [this.pub, this.sub]) if (c.status !== 'end') c.disconnect();
      this.o.metrics?.redisConnection.set(0);
      const cause = this.lastError ?? (err as Error);
      throw new Error(`Redis AgentHub: cannot connect to ${redactUrl(this.o.url)}: ${cause.message}`);
    }
    this.started = true;
    this.refreshTimer = setInterval(() => void this.refreshAll(), Math.max(100, Math.floor(this.ttlMs / 3)));
    this.refreshTimer.unref();
    this.updateStatus();
    this.log.debug('Redis AgentHub connected', {
      pod: this.podId,
      channel: this.channel,
    });
    return this;
  }

  async attach(conn: AgentConnection): Promise<AgentConnection | undefined> {
    const replaced = await this.localHub.attach(conn);
    try {
      const old = (await this.pub.eval(SWAP_SCRIPT, 1, agentKey(conn.agentDbId), this.location(conn), String(this.ttlMs))) as string | null;
      const prev = old ? parseLocation(old) : null;
      // The agent's previous socket lives on another pod (e.g. it reconnected through a load
      // balancer): tell that pod to drop it, so only one socket per agent stays current.
      if (prev && prev.podId !== this.podId) {
        await this.publish(prev.podId, { agentDbId: conn.agentDbId, evict: prev.connId });
      }
    } catch (err) {
      // The socket still works on this pod (commands come through PostgreSQL); the refresh timer
      // re-creates the key once Redis answers again.
      this.log.warn('Redis AgentHub: cannot record agent location', {
        agent: conn.agentId,
        error: (err as Error).message,
      });
    }
    return replaced;
  }

  async detach(conn: AgentConnection): Promise<boolean> {
    const wasCurrent = await this.localHub.detach(conn);
    if (!this.closed) {
      await this.pub.eval(COMPARE_DELETE_SCRIPT, 1, agentKey(conn.agentDbId), this.podId, conn.connId).catch((err: Error) =>
        this.log.warn('Redis AgentHub: cannot remove agent location', {
          agent: conn.agentId,
          error: err.message,
        }),
      );
    }
    return wasCurrent;
  }

  local(agentDbId: string): AgentConnection | undefined {
    return this.localHub.local(agentDbId);
  }

  localConnections(): AgentConnection[] {
    return this.localHub.localConnections();
  }

  /** Where Redis says the agent's socket is, if anywhere. */
  async locate(agentDbId: string): Promise<AgentLocation | null> {
    const v = await this.pub.get(agentKey(agentDbId));
    return v ? parseLocation(v) : null;
  }

  async sendToAgent(agentDbId: string, msg: ControlPlaneMessage): Promise<boolean> {
    const here = this.localHub.local(agentDbId);
    if (here) return here.send(msg);
    if (this.closed) return false;
    const where = await this.locate(agentDbId);
    // No owner, or a key naming this pod for a socket it no longer has (expires on its own).
    if (!where || where.podId === this.podId) return false;
    const receivers = await this.publish(where.podId, { agentDbId, msg });
    if (receivers === 0)
      this.log.debug('Redis AgentHub: owning pod is not listening', {
        agentDbId,
        pod: where.podId,
      });
    return receivers > 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    if (this.refreshTimer) clearInterval(this.refreshTimer);
    // Forget this pod's agents in Redis (other pods then answer "not connected" at once
    // instead of publishing into a channel nobody reads).
    await Promise.all(
      this.localHub.localConnections().map((c) => this.pub.eval(COMPARE_DELETE_SCRIPT, 1, agentKey(c.agentDbId), this.podId, c.connId).catch(() => undefined)),
    );
    this.closed = true;
    await Promise.all([this.sub.quit().catch(() => this.sub.disconnect()), this.pub.quit().catch(() => this.pub.disconnect())]);
    this.connected = false;
    this.o.metrics?.redisConnection.set(0);
    await this.localHub.close();
  }

  private location(conn: AgentConnection): string {
    return JSON.stringify({
      podId: this.podId,
      connId: conn.connId,
      agentId: conn.agentId,
    } satisfies AgentLocation);
  }

  private mac(input: string): string {
    return createHmac('sha256', this.key).update(input).digest('base64url');
  }

  private verifyMac(input: string, sig: unknown): boolean {
    if (typeof sig !== 'string') return false;
    const expected = Buffer.from(this.mac(input));
    const got = Buffer.from(sig);
    return got.length === expected.length && timingSafeEqual(got, expected);
  }

  /** Publishes a signed message to a pod's channel; resolves to the number of receivers. */
  private publish(podId: string, m: ChannelMessage): Promise<number> {
    const channel = podChannel(podId);
    const p = JSON.stringify(m);
    const ts = Date.now();
    return this.pub.publish(channel, JSON.stringify({ v: 1, ts, p, sig: this.mac(envelopeInput(channel, ts, p)) } satisfies Envelope));
  }

  /** Counts and logs (at most every 10 s, with the count) what was dropped. */
  private reject(what: string, fields: Record<string, unknown> = {}): void {
    this.rejectedMessages++;
    const now = Date.now();
    if (now - this.rejectLoggedAt < 10_000) return;
    this.rejectLoggedAt = now;
    this.log.warn(`Redis AgentHub: dropped ${what}`, { ...fields, pod: this.podId, rejected_total: this.rejectedMessages });
  }

  /**
   * Re-asserts this pod's agent locations: one pipelined round trip of REFRESH_MANY_SCRIPT calls
   * (REFRESH_BATCH keys each), not one command per agent.
   */
  private async refreshAll(): Promise<void> {
    if (this.closed || this.pub.status !== 'ready') return;
    const conns = this.localHub.localConnections();
    if (!conns.length) return;
    // Benchmark baseline (AGENT_HEARTBEAT_WRITE=per-beat): one command, one round trip, per agent.
    if (process.env.AGENT_HEARTBEAT_WRITE === 'per-beat') return this.refreshEach(conns);
    const pipeline = this.pub.pipeline();
    for (let i = 0; i < conns.length; i += REFRESH_BATCH) {
      const chunk = conns.slice(i, i + REFRESH_BATCH);
      const args = chunk.flatMap((c) => [c.connId, this.location(c)]);
      pipeline.eval(REFRESH_MANY_SCRIPT, chunk.length, ...chunk.map((c) => agentKey(c.agentDbId)), this.podId, String(this.ttlMs), ...args);
    }
    try {
      const results = (await pipeline.exec()) ?? [];
      const failed = results.find(([err]) => err)?.[0];
      if (failed) throw failed;
      const skipped = results.reduce((n, [, v]) => n + Number(v ?? 0), 0);
      if (skipped) this.log.debug('Redis AgentHub: agent locations naming another connection; not refreshed', { count: skipped });
    } catch (err) {
      this.log.warn('Redis AgentHub: cannot refresh agent locations', { agents: conns.length, error: (err as Error).message });
    }
  }

  private async refreshEach(conns: AgentConnection[]): Promise<void> {
    for (const c of conns) {
      try {
        const kept = await this.pub.eval(REFRESH_SCRIPT, 1, agentKey(c.agentDbId), this.podId, c.connId, this.location(c), String(this.ttlMs));
        if (kept === 0) this.log.debug('Redis AgentHub: agent location names another connection; not refreshed', { agent: c.agentId });
      } catch (err) {
        this.log.warn('Redis AgentHub: cannot refresh agent location', {
          agent: c.agentId,
          error: (err as Error).message,
        });
        return;
      }
    }
  }

  private onChannelMessage(payload: string): void {
    let env: Partial<Envelope>;
    try {
      env = JSON.parse(payload) as Partial<Envelope>;
    } catch {
      return this.reject('a pod message that is not JSON');
    }
    if (env?.v !== 1 || typeof env.ts !== 'number' || typeof env.p !== 'string' || !this.verifyMac(envelopeInput(this.channel, env.ts, env.p), env.sig))
      return this.reject('an unsigned or forged pod message');
    if (Math.abs(Date.now() - env.ts) > MAX_MESSAGE_AGE_MS) return this.reject('a stale (replayed?) pod message', { age_ms: Date.now() - env.ts });
    let m: ChannelMessage;
    try {
      m = JSON.parse(env.p) as ChannelMessage;
      if (typeof m?.agentDbId !== 'string') throw new Error('no agentDbId');
    } catch (err) {
      this.log.warn('Redis AgentHub: malformed pod message', {
        error: (err as Error).message,
      });
      return;
    }
    const conn = this.localHub.local(m.agentDbId);
    if (typeof m.evict === 'string') {
      if (conn && conn.connId === m.evict) {
        this.log.info('Agent reconnected through another pod; closing its stale socket here', { agent: conn.agentId, conn: conn.connId });
        conn.close(CloseCode.Replaced, 'replaced by a newer connection of the same agent');
      }
      return;
    }
    // Validated like anything else this pod writes to an agent socket.
    const parsed = parseControlPlaneMessage(encode(m.msg as ControlPlaneMessage));
    if (!parsed.ok) {
      this.log.warn('Redis AgentHub: refusing an invalid relayed message', {
        agentDbId: m.agentDbId,
        reason: parsed.reason,
      });
      return;
    }
    if (!conn) {
      this.log.warn('Redis AgentHub: relayed message for an agent no longer connected here', { agentDbId: m.agentDbId, type: parsed.value.type });
      return;
    }
    if (!conn.send(parsed.value))
      this.log.warn('Redis AgentHub: relayed message could not be written', {
        agent: conn.agentId,
        type: parsed.value.type,
      });
  }

  private updateStatus(): void {
    const up = !this.closed && this.pub.status === 'ready' && this.sub.status === 'ready';
    if (up === this.connected) return;
    this.connected = up;
    this.o.metrics?.redisConnection.set(up ? 1 : 0);
    if (up) this.errorLogged = false;
    else if (!this.closed && this.everReady.pub && this.everReady.sub)
      this.log.warn('Redis AgentHub disconnected; reconnecting', {
        error: this.lastError?.message,
      });
  }
}

interface Envelope {
  v: 1;
  ts: number;
  /** The ChannelMessage, as JSON text (signed as is). */
  p: string;
  sig: string;
}

/** Bound to the receiving channel and time, so a message cannot be replayed to another pod or later. */
const envelopeInput = (channel: string, ts: number, p: string) => `msg\n${channel}\n${ts}\n${p}`;

function parseLocation(v: string): AgentLocation | null {
  try {
    const o = JSON.parse(v) as Partial<AgentLocation>;
    return typeof o.podId === 'string' && typeof o.connId === 'string' ? { podId: o.podId, connId: o.connId, agentId: String(o.agentId ?? '') } : null;
  } catch {
    return null;
  }
}

/** The URL without its password, for log and error lines. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '<invalid REDIS_URL>';
  }
}
