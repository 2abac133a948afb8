/**
 * Cross-pod hand-off of VNC stream sockets: several API pods behind one Ingress (or Service).
 *
 * An agent outside the cluster reaches the control plane only through the Ingress, so the stream
 * socket it dials for a viewer (open_stream → AGENT_STREAM_PATH?stream_id=…) lands on any pod, not
 * necessarily the one holding the viewer's socket (the "owner"). The hand-off:
 *
 *   owner pod O:  before asking the agent for a stream, records
 *                   streamspace:vnc-stream:<stream_id> → {podId, url: POD_INTERNAL_URL, agentId, sig}
 *                 in Redis (PX = VNC_OPEN_TIMEOUT + 5 s; deleted when the stream arrives or fails).
 *   landing pod R: the agent's stream socket arrives, authenticated with the agent's token, for a
 *                 stream R does not wait for; R reads the record, checks its signature, and opens
 *                 one WebSocket "hop" to O's internal address (VNC_POD_HOP_PATH), signed with the
 *                 pods' shared key; only once O has accepted it does R accept the agent's socket,
 *                 then splices the two TCP connections (spliceSockets in protocol/relay.ts: the
 *                 WebSocket frames are the same on both legs, so R parses nothing; backpressure
 *                 by pipe, a close or error on either side closes both). O joins the hop to the
 *                 viewer as if it were the agent's own stream socket (idle timeout, byte metrics).
 *
 * A failure the agent reports on the stream URL (?error=…) travels the same way (O answers 410).
 * One hop per stream (never multiplexed, never on a control socket): no head-of-line blocking.
 *
 * Authentication: the key is HKDF-SHA256(hub key, "vnc-pod-hop-v1"), the hub key being
 * AGENT_HUB_SECRET or derived from AGENT_TOKEN_SECRET (api/agents/redis-hub.ts), so pods configured
 * alike agree. Records are signed (stream id, pod, URL, agent), so whoever can write to Redis cannot
 * redirect a stream (a desktop) to an address of their choosing; hop requests are signed
 * (target pod, time ±30 s, origin pod, agent, path with stream id and error), bound to the
 * receiving pod, and the stream id is single-use on the owner. The owner also checks that the
 * agent the landing pod authenticated is the one it asked.
 */
import { createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import http, { type IncomingMessage } from 'node:http';
import https from 'node:https';
import type net from 'node:net';
import type { Duplex } from 'node:stream';
import Redis from 'ioredis';
import type { Logger } from '../../config/log';
import { spliceSockets } from '../../protocol/relay';
import { rejectUpgrade } from '../agents/gateway';
import { hubSecretFromEnv, redactUrl } from '../agents/redis-hub';
import type { GatewayConfig } from '../config';
import { Counter, Gauge, type Metrics } from '../metrics';

/** Where a landing pod hands a stream to its owner (under /api/v1/agents/: served on both ports). */
export const VNC_POD_HOP_PATH = '/api/v1/agents/stream-hop';
export const STREAM_KEY_PREFIX = 'streamspace:vnc-stream:';
export const streamKey = (streamId: string) => STREAM_KEY_PREFIX + streamId;

const H_FROM = 'x-streamspace-hop-from';
const H_AGENT = 'x-streamspace-hop-agent';
const H_TS = 'x-streamspace-hop-ts';
const H_SIG = 'x-streamspace-hop-sig';
/** Hop requests older (or newer) than this are refused. */
const MAX_HOP_SKEW_MS = 30_000;

export interface StreamOwner {
  podId: string;
  /** ws(s)://host:port of the owner pod, reachable from the other pods. */
  url: string;
  agentId: string;
}

export interface VerifiedHop {
  streamId: string;
  agentId: string;
  fromPod: string;
  error: string | null;
}

export interface PodHandoffOptions {
  redisUrl: string;
  podId: string;
  /** This pod's address for other pods; null: streams can be handed from here, not to here. */
  internalUrl: string | null;
  key: Buffer;
  log: Logger;
  metrics: Metrics;
  /** Lifetime of a stream record (the agent's time to dial back, plus slack). */
  recordTtlMs: number;
  /** How long a hop may take to be accepted by the owner pod. */
  hopTimeoutMs?: number;
}

/** The hop key: HKDF of the hub key (AGENT_HUB_SECRET, else derived from AGENT_TOKEN_SECRET). */
export function podHopKey(agentTokenSecret: string, env: NodeJS.ProcessEnv = process.env): Buffer | null {
  const hub = hubSecretFromEnv(env) ?? (agentTokenSecret ? Buffer.from(hkdfSync('sha256', agentTokenSecret, 'streamspace', 'agent-hub-hmac-v1', 32)) : null);
  return hub ? Buffer.from(hkdfSync('sha256', hub, 'streamspace', 'vnc-pod-hop-v1', 32)) : null;
}

/** POD_INTERNAL_URL, else this pod's agent (or HTTP) listener when HOST names one address; else null. */
export function podInternalUrl(config: Pick<GatewayConfig, 'podInternalUrl' | 'host' | 'port' | 'agentWsPort'>): string | null {
  if (config.podInternalUrl) {
    const u = new URL(config.podInternalUrl);
    if (u.protocol === 'http:' || u.protocol === 'https:') u.protocol = u.protocol === 'http:' ? 'ws:' : 'wss:';
    if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new Error(`POD_INTERNAL_URL: "${config.podInternalUrl}" must be a ws(s):// or http(s):// URL`);
    return u.origin;
  }
  const host = config.host;
  if (!host || host === '0.0.0.0' || host === '::' || host === '[::]') return null;
  const port = config.agentWsPort > 0 ? config.agentWsPort : config.port;
  if (!(port > 0)) return null;
  return `ws://${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${port}`;
}

export class PodHandoff {
  private readonly redis: Redis;
  /** Sockets of the hops this pod forwards (agent side and hop side). */
  private readonly live = new Set<net.Socket>();
  private closed = false;
  private readonly relays: Counter;
  private readonly failures: Counter;
  private readonly active: Gauge;

  constructor(private readonly o: PodHandoffOptions) {
    this.redis = new Redis(o.redisUrl, {
      lazyConnect: true,
      connectionName: `streamspace-vnc-handoff-${o.podId}`,
      connectTimeout: 5_000,
      // A viewer waits on these: fail fast rather than queue behind a Redis outage.
      commandTimeout: 2_000,
      maxRetriesPerRequest: 1,
      retryStrategy: (times: number) => (this.closed ? null : Math.min(100 * 2 ** Math.min(times, 6), 5_000)),
    });
    this.redis.on('error', () => undefined);
    const r = o.metrics.registry;
    this.relays = new Counter(
      r,
      'streamspace_vnc_cross_pod_relays_total',
      'VNC streams carried between API pods: forwarded (the stream socket landed here, its viewer is on another pod) or accepted (a hop from another pod joined a viewer here)',
      ['role'],
    );
    this.failures = new Counter(r, 'streamspace_vnc_cross_pod_relay_failures_total', 'Cross-pod VNC hand-offs that failed, by reason', ['reason']);
    this.active = new Gauge(r, 'streamspace_vnc_cross_pod_active_relays', 'VNC streams this pod is forwarding to another pod');
  }

  get podId(): string {
    return this.o.podId;
  }

  async connect(): Promise<this> {
    try {
      await this.redis.connect();
    } catch (err) {
      this.redis.disconnect();
      throw new Error(`VNC stream hand-off: cannot connect to ${redactUrl(this.o.redisUrl)}: ${(err as Error).message}`);
    }
    this.o.log.info('VNC stream hand-off between pods enabled', { pod: this.o.podId, internal_url: this.o.internalUrl ?? '(none: POD_INTERNAL_URL unset)' });
    return this;
  }

  private mac(input: string): string {
    return createHmac('sha256', this.o.key).update(input).digest('base64url');
  }

  private verifyMac(input: string, sig: unknown): boolean {
    if (typeof sig !== 'string') return false;
    const expected = Buffer.from(this.mac(input));
    const got = Buffer.from(sig);
    return got.length === expected.length && timingSafeEqual(got, expected);
  }

  private recordInput = (streamId: string, r: StreamOwner) => `vnc-stream\n${streamId}\n${r.podId}\n${r.url}\n${r.agentId}`;

  /** Owner side: this pod waits for streamId from agentId (before the agent is asked). Never throws. */
  async register(streamId: string, agentId: string): Promise<void> {
    if (!this.o.internalUrl || this.closed) return;
    const rec: StreamOwner = { podId: this.o.podId, url: this.o.internalUrl, agentId };
    try {
      await this.redis.set(streamKey(streamId), JSON.stringify({ ...rec, sig: this.mac(this.recordInput(streamId, rec)) }), 'PX', this.o.recordTtlMs);
    } catch (err) {
      // The stream still works when it lands on this pod.
      this.failures.inc({ reason: 'redis' });
      this.o.log.warn('VNC stream hand-off: cannot record a pending stream in Redis', { stream: streamId, error: (err as Error).message });
    }
  }

  /** Owner side: the stream arrived or was given up. */
  unregister(streamId: string): void {
    if (!this.o.internalUrl || this.closed) return;
    this.redis.del(streamKey(streamId)).catch(() => undefined);
  }

  /** The verified owner of streamId, or null (none, expired, or a record that fails its signature). */
  async owner(streamId: string): Promise<StreamOwner | null> {
    let raw: string | null;
    try {
      raw = await this.redis.get(streamKey(streamId));
    } catch (err) {
      this.failures.inc({ reason: 'redis' });
      this.o.log.warn('VNC stream hand-off: cannot look up a stream in Redis', { stream: streamId, error: (err as Error).message });
      return null;
    }
    if (!raw) return null;
    try {
      const o = JSON.parse(raw) as Partial<StreamOwner> & { sig?: string };
      if (typeof o.podId !== 'string' || typeof o.url !== 'string' || typeof o.agentId !== 'string') throw new Error('incomplete');
      const rec: StreamOwner = { podId: o.podId, url: o.url, agentId: o.agentId };
      if (!this.verifyMac(this.recordInput(streamId, rec), o.sig)) throw new Error('bad signature');
      const proto = new URL(rec.url).protocol;
      if (proto !== 'ws:' && proto !== 'wss:') throw new Error('not a ws(s) URL');
      return rec;
    } catch (err) {
      this.failures.inc({ reason: 'forged_record' });
      this.o.log.warn('VNC stream hand-off: ignoring an invalid stream record in Redis', { stream: streamId, error: (err as Error).message });
      return null;
    }
  }

  /**
   * Landing side: a stream socket (agent already authenticated as agentId) for a stream this pod
   * does not wait for. Resolves false when no other pod waits for it either (the caller answers
   * 404); otherwise takes charge of the socket: relays it to the owner, or answers the agent
   * with the owner's refusal.
   */
  async forward(req: IncomingMessage, socket: Duplex, head: Buffer, streamId: string, agentId: string, error: string | null): Promise<boolean> {
    if (this.closed) return false;
    const owner = await this.owner(streamId);
    if (!owner || owner.podId === this.o.podId) return false;
    if (owner.agentId !== agentId) {
      rejectUpgrade(socket, 403, 'this stream belongs to another agent');
      return true;
    }
    const clientKey = req.headers['sec-websocket-key'];
    if (typeof clientKey !== 'string' || req.headers['sec-websocket-version'] !== '13') {
      rejectUpgrade(socket, 400, 'not a WebSocket 13 upgrade');
      return true;
    }
    const q = new URLSearchParams({ stream_id: streamId });
    if (error) q.set('error', error.slice(0, 1000));
    const target = new URL(`${VNC_POD_HOP_PATH}?${q.toString()}`, owner.url);
    const path = target.pathname + target.search;
    const ts = Date.now();
    const hopKey = randomBytes(16).toString('base64');
    // A plain WebSocket handshake to the owner; once both sides are upgraded the frames are the
    // same on both legs (the agent masks as a client, the owner answers unmasked), so this pod
    // splices the raw bytes and parses nothing.
    const hopReq = (target.protocol === 'wss:' ? https : http).request({
      host: target.hostname.replace(/^\[|\]$/g, ''),
      port: target.port || (target.protocol === 'wss:' ? 443 : 80),
      path,
      headers: {
        connection: 'Upgrade',
        upgrade: 'websocket',
        'sec-websocket-version': '13',
        'sec-websocket-key': hopKey,
        [H_FROM]: this.o.podId,
        [H_AGENT]: agentId,
        [H_TS]: String(ts),
        [H_SIG]: this.mac(hopInput(owner.podId, ts, this.o.podId, agentId, path)),
      },
      timeout: this.o.hopTimeoutMs ?? 5_000,
    });
    // Until the owner answers, the agent's socket waits un-upgraded; if it goes, so does the hop.
    const agentGone = () => hopReq.destroy();
    socket.once('close', agentGone);
    let settled = false;
    const refuse = (status: number, reason: string, why: string) => {
      if (settled) return;
      settled = true;
      socket.off('close', agentGone);
      hopReq.destroy();
      if (!(error && status === 410)) this.failures.inc({ reason: why });
      if (!socket.destroyed) rejectUpgrade(socket, status, reason);
    };
    hopReq.once('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        if (body.length < 2000) body += d;
      });
      res.once('end', () => {
        let reason = `refused by pod ${owner.podId}`;
        try {
          reason = String((JSON.parse(body) as { message?: unknown }).message ?? reason);
        } catch {
          // not JSON
        }
        const status = res.statusCode ?? 502;
        if (status === 410 && error) this.o.log.debug('VNC stream failure handed to the owner pod', { stream: streamId, owner: owner.podId });
        else this.o.log.warn('VNC stream hand-off refused by the owner pod', { stream: streamId, owner: owner.podId, status, reason });
        refuse(status, reason, `owner_${status}`);
      });
      res.once('error', () => refuse(502, `refused by pod ${owner.podId}`, 'owner_unreachable'));
    });
    const onTimeout = () => hopReq.destroy(new Error(`no answer within ${this.o.hopTimeoutMs ?? 5_000} ms`));
    hopReq.once('timeout', onTimeout);
    hopReq.on('error', (err) => {
      if (settled) return;
      this.o.log.warn('VNC stream hand-off: cannot reach the owner pod', { stream: streamId, owner: owner.podId, url: owner.url, error: err.message });
      refuse(502, `cannot reach pod ${owner.podId}, which holds the viewer`, 'owner_unreachable');
    });
    hopReq.once('upgrade', (res, hop: net.Socket, hopHead: Buffer) => {
      // The handshake timeout must not outlive the handshake (an idle desktop is fine).
      hopReq.off('timeout', onTimeout);
      hop.setTimeout(0);
      if (settled) return hop.destroy();
      if (res.headers['sec-websocket-accept'] !== wsAccept(hopKey) || res.headers['sec-websocket-extensions']) {
        hop.destroy();
        return refuse(502, `pod ${owner.podId} answered the hop with a bad handshake`, 'owner_bad_handshake');
      }
      settled = true;
      socket.off('close', agentGone);
      if (socket.destroyed || this.closed || error) {
        hop.destroy();
        if (!socket.destroyed) rejectUpgrade(socket, 410, 'gone');
        return;
      }
      const agent = socket as net.Socket;
      agent.setTimeout(0);
      agent.write(`HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${wsAccept(clientKey)}\r\n\r\n`);
      if (hopHead.length) agent.write(hopHead);
      if (head.length) hop.write(head);
      this.relay(agent, hop, streamId, owner.podId);
    });
    hopReq.end();
    return true;
  }

  private relay(agent: net.Socket, hop: net.Socket, streamId: string, ownerPod: string): void {
    this.live.add(agent);
    this.live.add(hop);
    this.relays.inc({ role: 'forwarded' });
    this.active.inc();
    this.o.log.info('VNC stream landed here; relaying it to the pod that holds the viewer', { stream: streamId, owner: ownerPod });
    spliceSockets(agent, hop, {
      onClose: () => {
        this.live.delete(agent);
        this.live.delete(hop);
        this.active.dec();
      },
    });
  }

  /** Owner side: checks a hop request's signature; the reason when it fails. */
  verifyHop(req: IncomingMessage): VerifiedHop | { status: number; reason: string } {
    const h = (name: string) => {
      const v = req.headers[name];
      return typeof v === 'string' ? v : undefined;
    };
    const fromPod = h(H_FROM);
    const agentId = h(H_AGENT);
    const ts = Number(h(H_TS));
    const path = req.url ?? '/';
    const bad = (reason: string) => {
      this.failures.inc({ reason: 'unauthenticated_hop' });
      this.o.log.warn('VNC stream hand-off: refused an unauthenticated hop', { reason, from: fromPod?.slice(0, 100) });
      return { status: 401, reason: 'pod hop authentication failed' };
    };
    if (!fromPod || !agentId || !Number.isFinite(ts)) return bad('missing headers');
    if (!this.verifyMac(hopInput(this.o.podId, ts, fromPod, agentId, path), h(H_SIG))) return bad('bad signature (or addressed to another pod)');
    if (Math.abs(Date.now() - ts) > MAX_HOP_SKEW_MS) return bad('stale');
    const q = new URL(path, 'http://x').searchParams;
    const streamId = q.get('stream_id');
    if (!streamId) return { status: 400, reason: 'missing stream_id' };
    return { streamId, agentId, fromPod, error: q.get('error') };
  }

  /** Owner side: a verified hop was joined to a viewer here. */
  accepted(): void {
    this.relays.inc({ role: 'accepted' });
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const s of this.live) s.destroy();
    this.live.clear();
    this.redis.quit().catch(() => this.redis.disconnect());
  }
}

/** RFC 6455 Sec-WebSocket-Accept for a Sec-WebSocket-Key. */
const wsAccept = (key: string) =>
  createHash('sha1')
    .update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11')
    .digest('base64');

/** Bound to the receiving pod, the time, the sending pod, the agent and the request path (stream id, error). */
const hopInput = (targetPod: string, ts: number, fromPod: string, agentId: string, path: string) =>
  `vnc-hop-v1\n${targetPod}\n${ts}\n${fromPod}\n${agentId}\n${path}`;

/** The hand-off for a Redis-hub gateway (null with the memory hub: one pod, nothing to hand off). */
export async function createPodHandoff(config: GatewayConfig, log: Logger, metrics: Metrics): Promise<PodHandoff | null> {
  if (config.hubBackend !== 'redis' || !config.redisUrl) return null;
  const key = podHopKey(config.agentTokenSecret);
  if (!key) {
    log.warn('VNC stream hand-off between pods disabled: no AGENT_HUB_SECRET / AGENT_TOKEN_SECRET');
    return null;
  }
  const internalUrl = podInternalUrl(config);
  if (!internalUrl)
    log.warn(
      'POD_INTERNAL_URL is unset and HOST is a wildcard: VNC streams that land on another pod cannot be handed to this one (set POD_INTERNAL_URL=ws://<pod-ip>:<AGENT_WS_PORT>)',
    );
  return new PodHandoff({
    redisUrl: config.redisUrl,
    podId: config.podId,
    internalUrl,
    key,
    log,
    metrics,
    recordTtlMs: config.vncOpenTimeoutMs + 5_000,
  }).connect();
}
