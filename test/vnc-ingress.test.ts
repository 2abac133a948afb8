/**
 * Issue 11, item 5: a Docker agent outside the cluster reaches the control plane only through the
 * Ingress, with several API pods behind it, and still gets working VNC.
 *
 * Two API pods (Redis hub) sit behind a small round-robin TCP proxy (the "Ingress") on 127.0.0.1;
 * the agent's CONTROL_PLANE_URL and both pods' AGENT_STREAM_URL are the proxy, and the agent may
 * dial streams nowhere else (AGENT_STREAM_HOSTS empty). So every stream socket lands on whichever
 * pod is next, while viewers connect straight to a chosen pod. A stream that lands on the pod
 * without the viewer must be handed over (api/vnc/pod-hop.ts): each viewer gets the RFB handshake
 * and framebuffer updates (bytes both ways), whichever pod its stream landed on; the metrics count
 * exactly the streams that crossed; a forged Redis record or hop request gets nothing; closing
 * either end (or losing the forwarding pod) closes every hop.
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import Redis from 'ioredis';
import WebSocket from 'ws';
import { RfbClient } from '../bench/rfb';
import { STREAM_KEY_PREFIX, VNC_POD_HOP_PATH } from '../api/vnc/pod-hop';
import { AGENT_STREAM_PATH } from '../protocol/messages';
import { TEST_ENV } from './harness/env';
import { ApiPod, Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

/** A value of one series: name{labels} (labels as printed, e.g. `role="forwarded"`), 0 when absent. */
function metric(text: string, name: string, labels?: string): number {
  const re = labels
    ? new RegExp(`^${name}\\{${labels.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\} (\\S+)$`, 'm')
    : new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm');
  const m = re.exec(text);
  return m ? Number(m[1]) : 0;
}

/** The "Ingress": TCP round robin over the backends, recording where each connection went and what it asked for. */
class RoundRobinProxy {
  readonly server = net.createServer((c) => this.onConnection(c));
  backends: number[] = [];
  readonly connections: { backend: number; path: string }[] = [];
  private readonly sockets = new Set<net.Socket>();
  private next = 0;
  port = 0;

  async listen(): Promise<this> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  /** Stream sockets (not control sockets), in the order they arrived. */
  streams(): { backend: number; path: string }[] {
    return this.connections.filter((c) => c.path.startsWith(AGENT_STREAM_PATH + '?'));
  }

  private onConnection(client: net.Socket): void {
    const backend = this.next++ % this.backends.length;
    const rec = { backend, path: '' };
    this.connections.push(rec);
    const upstream = net.connect({ host: '127.0.0.1', port: this.backends[backend], noDelay: true });
    client.setNoDelay(true);
    for (const s of [client, upstream]) {
      this.sockets.add(s);
      s.on('error', () => undefined);
      s.once('close', () => {
        this.sockets.delete(s);
        client.destroy();
        upstream.destroy();
      });
    }
    client.once('data', (d: Buffer) => (rec.path = /^GET (\S+)/.exec(d.toString('latin1'))?.[1] ?? '?'));
    client.pipe(upstream);
    upstream.pipe(client);
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }
}

interface Viewer {
  client: RfbClient;
  /** The pod (0, 1) the viewer is connected to, and the one its stream socket landed on. */
  pod: number;
  landed: number;
  width: number;
  height: number;
}

describe('VNC for an agent behind an Ingress with two API pods', () => {
  const POD1 = `ingress-pod-1-${randomUUID().slice(0, 8)}`;
  const stack = new Stack('vnc-ingress', {
    AGENT_HUB_BACKEND: 'redis',
    REDIS_URL: TEST_ENV.redisUrl,
    POD_ID: POD1,
    VNC_OPEN_TIMEOUT: '5s',
  });
  const AGENT = 'docker-ingress-1';
  let proxy: RoundRobinProxy;
  let pod2: ApiPod;
  let redis: Redis;
  let alice: string;
  let sessionId: string;
  /** Viewer pods by index: 0 is the Stack's gateway, 1 is pod 2 (the proxy's backends in that order). */
  const httpPort = (i: number) => (i === 0 ? stack.apiPort : pod2.port);
  const metricsOf = async (i: number) => (await (await fetch(`http://127.0.0.1:${httpPort(i)}/metrics`)).text()) as string;
  const relays = async (i: number, role: 'forwarded' | 'accepted') => metric(await metricsOf(i), 'streamspace_vnc_cross_pod_relays_total', `role="${role}"`);
  const ticketUrl = async () => {
    const t = await stack.call('POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice);
    if (t.status !== 201) throw new Error(`ticket: ${t.status} ${JSON.stringify(t.body)}`);
    return t.body.url as string;
  };

  /** Opens a viewer on pod i; resolves once the RFB handshake is done, with the pod its stream landed on. */
  async function viewer(i: number): Promise<Viewer> {
    const before = proxy.streams().length;
    const started = Date.now();
    const client = await RfbClient.websocket(`ws://127.0.0.1:${httpPort(i)}${await ticketUrl()}`);
    const init = await client.handshake();
    const streams = proxy.streams();
    expect(streams.length).toBe(before + 1);
    const landed = streams[before].backend;
    console.log(`viewer on pod ${i + 1}: stream landed on pod ${landed + 1}; handshake ${Date.now() - started} ms`);
    return { client, pod: i, landed, width: init.width, height: init.height };
  }

  /** A full (non-incremental) framebuffer update: client → server request, server → client pixels. */
  async function fullUpdate(v: { client: RfbClient; width: number; height: number }): Promise<number> {
    v.client.request(0, 0, v.width, v.height, false);
    return v.client.readUpdate();
  }

  beforeAll(async () => {
    redis = new Redis(TEST_ENV.redisUrl);
    proxy = await new RoundRobinProxy().listen();
    const ingress = `ws://127.0.0.1:${proxy.port}`;
    // The URL agents get in open_stream: the Ingress, not a pod's own address.
    stack.extraEnv.AGENT_STREAM_URL = ingress;
    await stack.start();
    // POD_INTERNAL_URL unset: each pod hands out HOST:AGENT_WS_PORT (127.0.0.1:<port>) to the others.
    pod2 = await stack.startApiPod('api-2', { AGENT_STREAM_URL: ingress });
    proxy.backends = [stack.agentPort, pod2.agentPort];
    // CONTROL_PLANE_URL is the Ingress and the agent may dial streams nowhere else.
    await stack.startDockerAgent(AGENT, { CONTROL_PLANE_URL: ingress, AGENT_STREAM_HOSTS: '', VNC_PORT_RANGE: '15930-15939' });
    const admin = await stack.login();
    await stack.call('POST', '/api/v1/users', { username: 'alice', password: 'alice-password' }, admin);
    alice = await stack.login('alice', 'alice-password');
    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice);
    expect(created.status).toBeLessThan(300);
    sessionId = created.body.id;
    await stack.waitForState(alice, sessionId, 'running', 120_000);
  });

  afterAll(async () => {
    await stack.stop();
    await proxy?.close();
    await redis?.quit();
  });

  test('both pods run the hand-off; the agent reached them only through the proxy', async () => {
    for (const p of [stack.api, pod2.proc]) expect(p.output).toMatch(/VNC stream hand-off between pods enabled/);
    expect(proxy.connections.length).toBeGreaterThanOrEqual(1);
    expect(proxy.connections[0].path).not.toMatch(/stream/);
  });

  test('several viewers on each pod get the RFB handshake and framebuffer updates, wherever their stream landed', async () => {
    const base = await Promise.all([0, 1].map(async (i) => ({ forwarded: await relays(i, 'forwarded'), accepted: await relays(i, 'accepted') })));
    // One pod after the other, so the round robin sends streams of each pod's viewers to both pods.
    const viewers: Viewer[] = [];
    for (const i of [0, 0, 0, 0, 1, 1, 1, 1]) viewers.push(await viewer(i));
    const crossed = (from: number) => viewers.filter((v) => v.landed === from && v.pod !== from).length;
    // Both directions happened: streams for pod 1's viewers landed on pod 2 and the reverse.
    expect(crossed(1)).toBeGreaterThanOrEqual(1);
    expect(crossed(0)).toBeGreaterThanOrEqual(1);
    for (const v of viewers) expect(await fullUpdate(v)).toBeGreaterThan(v.width * v.height);
    // All at once, interleaved: each still gets its own updates.
    const sizes = await Promise.all(viewers.map((v) => fullUpdate(v)));
    for (const [k, v] of viewers.entries()) expect(sizes[k]).toBeGreaterThan(v.width * v.height);

    // Exactly the streams that crossed were relayed: forwarded by the pod they landed on, accepted by the viewer's.
    for (const i of [0, 1]) {
      const other = 1 - i;
      expect((await relays(i, 'forwarded')) - base[i].forwarded).toBe(crossed(i));
      expect((await relays(other, 'accepted')) - base[other].accepted).toBe(crossed(i));
      expect(metric(await metricsOf(i), 'streamspace_vnc_cross_pod_active_relays')).toBe(crossed(i));
      // Tunnels are counted where the viewers are.
      expect(metric(await metricsOf(i), 'streamspace_vnc_active_tunnels')).toBe(4);
      expect(metric(await metricsOf(i), 'streamspace_vnc_cross_pod_relay_failures_total')).toBe(0);
    }
    expect(stack.api.output + pod2.proc.output).toMatch(/VNC stream landed here; relaying it to the pod that holds the viewer/);

    // Closing the viewers closes every hop and every tunnel on both pods.
    for (const v of viewers) v.client.close();
    await waitFor(
      'tunnels and hops closed',
      async () => {
        for (const i of [0, 1]) {
          const m = await metricsOf(i);
          if (metric(m, 'streamspace_vnc_active_tunnels') !== 0 || metric(m, 'streamspace_vnc_cross_pod_active_relays') !== 0) return false;
        }
        return true;
      },
      15_000,
      200,
    );
    expect(await redis.keys(`${STREAM_KEY_PREFIX}*`)).toEqual([]);
  });

  test('throughput and handshake time through the extra hop (printed)', async () => {
    // A direct and a crossed viewer on pod 1.
    const picked: Record<'direct' | 'crossed', Viewer | undefined> = { direct: undefined, crossed: undefined };
    for (let k = 0; k < 6 && (!picked.direct || !picked.crossed); k++) {
      const v = await viewer(0);
      const kind = v.landed === 0 ? 'direct' : 'crossed';
      if (picked[kind]) v.client.close();
      else picked[kind] = v;
    }
    const result: Record<string, number> = {};
    for (const kind of ['direct', 'crossed', 'direct', 'crossed'] as const) {
      const v = picked[kind]!;
      const started = process.hrtime.bigint();
      let bytes = 0;
      for (let n = 0; n < 15; n++) bytes += await fullUpdate(v);
      const s = Number(process.hrtime.bigint() - started) / 1e9;
      result[kind] = Math.max(result[kind] ?? 0, bytes / s / 1e6);
    }
    console.log(
      `full-frame throughput (${picked.direct!.width}x${picked.direct!.height}, 15 updates, best of 2): direct ${result.direct.toFixed(1)} MB/s, ` +
        `through a pod hop ${result.crossed.toFixed(1)} MB/s (${((100 * result.crossed) / result.direct).toFixed(0)} %)`,
    );
    expect(result.crossed).toBeGreaterThan(0);
    for (const v of Object.values(picked)) v!.client.close();
  });

  test('a forged Redis record or an unsigned hop request gets nothing', async () => {
    // A record (unsigned, or signed with another key) pointing at an attacker's listener.
    let hijacked = 0;
    const trap = net.createServer((s) => {
      hijacked++;
      s.destroy();
    });
    await new Promise<void>((r) => trap.listen(0, '127.0.0.1', r));
    const trapUrl = `ws://127.0.0.1:${(trap.address() as net.AddressInfo).port}`;
    const streamId = randomUUID();
    await redis.set(`${STREAM_KEY_PREFIX}${streamId}`, JSON.stringify({ podId: 'evil', url: trapUrl, agentId: AGENT, sig: 'AAAA' }), 'PX', 10_000);
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${pod2.agentPort}${AGENT_STREAM_PATH}?stream_id=${streamId}`, {
        headers: { authorization: `Bearer ${stack.agentToken(AGENT)}` },
      });
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode!));
      ws.on('open', () => reject(new Error('the forged stream was accepted')));
      ws.on('error', reject);
    });
    expect(status).toBe(404);
    expect(hijacked).toBe(0);
    expect(metric(await metricsOf(1), 'streamspace_vnc_cross_pod_relay_failures_total', 'reason="forged_record"')).toBeGreaterThanOrEqual(1);
    trap.close();
    await redis.del(`${STREAM_KEY_PREFIX}${streamId}`);

    // A hop request without (or with a made-up) signature is refused before anything else.
    for (const headers of [
      {},
      { 'x-streamspace-hop-from': 'evil', 'x-streamspace-hop-agent': AGENT, 'x-streamspace-hop-ts': String(Date.now()), 'x-streamspace-hop-sig': 'x' },
    ]) {
      const s = await new Promise<number>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${stack.agentPort}${VNC_POD_HOP_PATH}?stream_id=${randomUUID()}`, { headers });
        ws.on('unexpected-response', (_req, res) => resolve(res.statusCode!));
        ws.on('open', () => reject(new Error('an unsigned hop was accepted')));
        ws.on('error', reject);
      });
      expect(s).toBe(401);
    }
    expect(metric(await metricsOf(0), 'streamspace_vnc_cross_pod_relay_failures_total', 'reason="unauthenticated_hop"')).toBeGreaterThanOrEqual(2);
  });

  test('losing the pod a stream landed on closes the viewer on the other pod; a new viewer works', async () => {
    // A viewer on pod 1 whose stream landed on pod 2 (the agent's control socket is on pod 1: the
    // proxy's first connection).
    let v: Viewer | undefined;
    for (let k = 0; k < 4 && !v; k++) {
      const x = await viewer(0);
      if (x.landed === 1) v = x;
      else x.client.close();
    }
    expect(v).toBeDefined();
    expect(await fullUpdate(v!)).toBeGreaterThan(0);
    const closed = v!.client.readUpdate().then(
      () => 'data',
      (err: Error) => err.message,
    );
    await pod2.proc.kill('SIGKILL');
    expect(await closed).toMatch(/closed|ended/);
    await waitFor('tunnel closed on pod 1', async () => metric(await metricsOf(0), 'streamspace_vnc_active_tunnels') === 0, 15_000, 200);
    // Streams landing on the dead backend fail at the proxy; the next one (pod 1) works.
    proxy.backends = [stack.agentPort, stack.agentPort];
    const again = await viewer(0);
    expect(await fullUpdate(again)).toBeGreaterThan(0);
    again.client.close();
  });
});
