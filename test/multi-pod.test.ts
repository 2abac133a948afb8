/**
 * Several API pods sharing agent connections through Redis (AGENT_HUB_BACKEND=redis).
 *
 * Pod 1 is the Stack's gateway and holds the Docker agent's control socket; pod 2 is a second
 * gateway process on the same database, Temporal queue and Redis. A session is created,
 * viewed and hibernated through pod 2: commands cross pods through PostgreSQL, the VNC
 * open_stream crosses through Redis to pod 1, and the agent dials its stream back to pod 2.
 */
import { randomUUID } from 'node:crypto';
import Redis from 'ioredis';
import type { AgentConnection } from '../api/agents/hub';
import { agentKey, RedisAgentHub } from '../api/agents/redis-hub';
import { createMetrics } from '../api/metrics';
import type { Logger } from '../config/log';
import type { ControlPlaneMessage } from '../protocol/messages';
import { TEST_ENV } from './harness/env';
import { ApiResponse, freePort, Proc, Stack, waitFor } from './harness/stack';
import { openViewer } from './harness/viewer';

jest.setTimeout(300_000);

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

async function call<T = any>(base: string, method: string, urlPath: string, body?: unknown, token?: string): Promise<ApiResponse<T>> {
  const res = await fetch(base + urlPath, {
    method,
    headers: {
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body: parsed as T };
}

describe('two API pods sharing one agent through Redis', () => {
  const stack = new Stack('multi-pod', {
    AGENT_HUB_BACKEND: 'redis',
    REDIS_URL: TEST_ENV.redisUrl,
    POD_ID: `pod-1-${randomUUID().slice(0, 8)}`,
  });
  const POD1 = stack.extraEnv.POD_ID!;
  const POD2 = POD1.replace('pod-1', 'pod-2');
  const AGENT = 'docker-multipod-1';
  let pod2: Proc;
  let pod2Port = 0;
  let pod2AgentPort = 0;
  let redis: Redis;
  let alice: string;
  let sessionId: string;
  let agentDbId: string;

  const pod1Url = () => stack.url;
  const pod2Url = () => `http://127.0.0.1:${pod2Port}`;
  const metrics = async (base: string) => (await call<string>(base, 'GET', '/metrics')).body;

  beforeAll(async () => {
    redis = new Redis(TEST_ENV.redisUrl);
    await stack.start();
    pod2Port = await freePort();
    pod2AgentPort = await freePort();
    pod2 = new Proc(
      'api-2',
      'api/main.js',
      {
        ...stack.commonEnv,
        PORT: String(pod2Port),
        AGENT_WS_PORT: String(pod2AgentPort),
        HOST: '127.0.0.1',
        POD_ID: POD2,
        // Agents dial VNC streams for browsers on pod 2 straight back to pod 2.
        AGENT_STREAM_URL: `ws://127.0.0.1:${pod2AgentPort}`,
      },
      stack.logDir,
    ).start();
    await pod2.waitForLog(/Server started/);
    // The agent's CONTROL_PLANE_URL is pod 1's agent port: pod 1 holds its control socket.
    await stack.startDockerAgent(AGENT, { VNC_PORT_RANGE: '15970-15979' });
    const admin = await stack.login();
    await call(pod2Url(), 'POST', '/api/v1/users', { username: 'alice', password: 'alice-password' }, admin);
    alice = (
      await call(pod2Url(), 'POST', '/api/v1/auth/login', {
        username: 'alice',
        password: 'alice-password',
      })
    ).body.token;
    agentDbId = (await stack.pool.query<{ id: string }>('SELECT id FROM agents WHERE agent_id = $1', [AGENT])).rows[0].id;
  });

  afterAll(async () => {
    await pod2?.kill('SIGKILL');
    await stack.stop();
    await redis?.quit();
  });

  test('both pods run the Redis hub and are connected to Redis', async () => {
    expect(stack.api.output).toMatch(/Redis AgentHub initialized \(multi-pod mode\)/);
    expect(pod2.output).toMatch(/Redis AgentHub initialized \(multi-pod mode\)/);
    for (const base of [pod1Url(), pod2Url()]) expect(metric(await metrics(base), 'streamspace_redis_connection_status')).toBe(1);
    // Each pod listens on its own channel.
    const subs = (await redis.call('PUBSUB', 'NUMSUB', `streamspace:pod:${POD1}`, `streamspace:pod:${POD2}`)) as (string | number)[];
    expect(Number(subs[1])).toBeGreaterThanOrEqual(1);
    expect(Number(subs[3])).toBeGreaterThanOrEqual(1);
  });

  test("the agent's location is in Redis, naming pod 1, with a TTL", async () => {
    const v = await redis.get(agentKey(agentDbId));
    expect(v).not.toBeNull();
    const loc = JSON.parse(v!);
    const row = (await stack.pool.query('SELECT websocket_conn_id FROM agents WHERE id = $1', [agentDbId])).rows[0];
    expect(loc).toEqual({
      podId: POD1,
      connId: row.websocket_conn_id,
      agentId: AGENT,
    });
    const ttl = await redis.pttl(agentKey(agentDbId));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(90_000);
  });

  test('(a) a session created through pod 2 reaches running on the agent held by pod 1', async () => {
    const r = await call(pod2Url(), 'POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice);
    expect(r.status).toBeLessThan(300);
    sessionId = r.body.id;
    await waitFor(
      'session running (seen through pod 2)',
      async () => {
        const s = await call(pod2Url(), 'GET', `/api/v1/sessions/${sessionId}`, undefined, alice);
        if (s.body?.state === 'failed') throw new Error(`session failed: ${s.body.error}`);
        return s.body?.state === 'running';
      },
      120_000,
      200,
    );
    expect(stack.agents.get(AGENT)!.output).toMatch(new RegExp(sessionId));
  });

  test('(b) a viewer on pod 2 gets the RFB greeting: open_stream crossed Redis to pod 1, the stream dialled back to pod 2', async () => {
    // The ticket can be issued by either pod (it lives in PostgreSQL).
    const t = await call(pod1Url(), 'POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice);
    expect(t.status).toBe(201);
    const v = await openViewer(pod2Port, t.body.url);
    expect(v).toMatchObject({ greeting: 'RFB 003.008\n' });
    // The tunnel runs through pod 2; pod 1 only relayed the control message.
    expect(metric(await metrics(pod2Url()), 'streamspace_vnc_active_tunnels')).toBe(1);
    expect(metric(await metrics(pod1Url()), 'streamspace_vnc_active_tunnels')).toBe(0);
    if ('ws' in v) v.ws.close();
    await waitFor('pod 2 tunnel closed', async () => metric(await metrics(pod2Url()), 'streamspace_vnc_active_tunnels') === 0);

    // A viewer on pod 1 (where the agent is local) still works, and several at once across pods.
    const a = await openViewer(stack.apiPort, (await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice)).body.url);
    const b = await openViewer(pod2Port, (await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice)).body.url);
    expect(a).toMatchObject({ greeting: 'RFB 003.008\n' });
    expect(b).toMatchObject({ greeting: 'RFB 003.008\n' });
    for (const x of [a, b]) if ('ws' in x) x.ws.close();
    await waitFor(
      'tunnels closed',
      async () =>
        metric(await metrics(pod1Url()), 'streamspace_vnc_active_tunnels') === 0 && metric(await metrics(pod2Url()), 'streamspace_vnc_active_tunnels') === 0,
    );
  });

  test('(c) hibernate and wake through pod 2', async () => {
    const hib = await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/hibernate`, undefined, alice);
    expect(hib.status).toBe(200);
    expect(hib.body.state).toBe('hibernated');
    const woke = await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/wake`, undefined, alice);
    expect(woke.status).toBe(200);
    expect(woke.body.state).toBe('running');
    // And the woken session is viewable through pod 2 again.
    const v = await openViewer(pod2Port, (await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice)).body.url);
    expect(v).toMatchObject({ greeting: 'RFB 003.008\n' });
    if ('ws' in v) v.ws.close();
  });

  test('(e) the agent disconnecting cleanly removes its Redis key; pod 2 then answers "not connected" at once', async () => {
    expect(await redis.exists(agentKey(agentDbId))).toBe(1);
    await stack.agents.get(AGENT)!.kill('SIGTERM');
    await waitFor('agent key removed', async () => (await redis.exists(agentKey(agentDbId))) === 0, 15_000);
    const started = Date.now();
    const v = await openViewer(pod2Port, (await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice)).body.url);
    expect(v).toMatchObject({
      status: 502,
      body: expect.stringMatching(/not connected/),
    });
    expect(Date.now() - started).toBeLessThan(5_000);
    // Back again: the key names pod 1 once more, and streams through pod 2 work.
    await stack.startDockerAgent(AGENT);
    await waitFor('agent key back', async () => JSON.parse((await redis.get(agentKey(agentDbId))) ?? 'null')?.podId === POD1, 15_000);
    const again = await openViewer(pod2Port, (await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice)).body.url);
    expect(again).toMatchObject({ greeting: 'RFB 003.008\n' });
    if ('ws' in again) again.ws.close();
  });

  test("an agent that cannot reach the session's VNC server tells the viewer's pod at once, not after a timeout", async () => {
    const [container] = await stack.containers(sessionId);
    await stack.docker.getContainer(container.Id).stop({ t: 1 });
    try {
      const started = Date.now();
      const v = await openViewer(pod2Port, (await call(pod2Url(), 'POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, {}, alice)).body.url);
      expect(v).toMatchObject({ status: 502, body: expect.stringMatching(/not running/) });
      expect(Date.now() - started).toBeLessThan(5_000); // VNC_OPEN_TIMEOUT is 10 s
    } finally {
      await stack.docker.getContainer(container.Id).start();
    }
  });

  test('a pod that cannot reach Redis refuses to start, saying why', async () => {
    const deadPort = await freePort();
    const p = new Proc(
      'api-no-redis',
      'api/main.js',
      {
        ...stack.commonEnv,
        PORT: String(await freePort()),
        AGENT_WS_PORT: '0',
        HOST: '127.0.0.1',
        POD_ID: 'pod-no-redis',
        REDIS_URL: `redis://127.0.0.1:${deadPort}`,
      },
      stack.logDir,
    ).start();
    const code = await new Promise<number | null>((resolve) => p.child!.once('exit', (c) => resolve(c)));
    expect(code).not.toBe(0);
    expect(p.output).toMatch(new RegExp(`Redis AgentHub: cannot connect to redis://127\\.0\\.0\\.1:${deadPort}.*ECONNREFUSED`));
    expect(p.output).not.toMatch(/Server started/);
  });
});

describe('RedisAgentHub against real Redis (in process)', () => {
  const quiet: Logger = {
    debug: () => undefined,
    info: () => undefined,
    warn: () => undefined,
    error: () => undefined,
  };
  const run = randomUUID().slice(0, 8);
  const hubs: RedisAgentHub[] = [];
  let redis: Redis;

  const newHub = async (podId: string) => {
    const h = await new RedisAgentHub({
      url: TEST_ENV.redisUrl,
      podId: `${podId}-${run}`,
      log: quiet,
      ttlMs: 3_000,
    }).connect();
    hubs.push(h);
    return h;
  };
  const fakeConn = (agentDbId: string, connId = randomUUID()) => {
    const got: ControlPlaneMessage[] = [];
    const closed: number[] = [];
    const conn: AgentConnection = {
      agentId: `agent-${agentDbId.slice(0, 6)}`,
      agentDbId,
      connId,
      send: (m) => (got.push(m), true),
      close: (code) => void closed.push(code),
    };
    return { conn, got, closed };
  };
  const openStream = (n: number): ControlPlaneMessage => ({
    type: 'open_stream',
    stream_id: randomUUID(),
    session_id: `s-${n}`,
    url: '/api/v1/agents/stream?stream_id=x',
  });

  beforeAll(() => {
    redis = new Redis(TEST_ENV.redisUrl);
  });
  afterAll(async () => {
    for (const h of hubs) await h.close();
    await redis.quit();
  });

  test('relays to the owning pod, compare-and-deletes on detach, evicts a stale socket on another pod', async () => {
    const [a, b] = [await newHub('hub-a'), await newHub('hub-b')];
    const id = randomUUID();
    const x = fakeConn(id);
    await a.attach(x.conn);
    expect(JSON.parse((await redis.get(agentKey(id)))!)).toMatchObject({
      podId: a.podId,
      connId: x.conn.connId,
    });

    // b → a through Redis; b has no local socket.
    expect(b.local(id)).toBeUndefined();
    expect(await b.sendToAgent(id, openStream(1))).toBe(true);
    await waitFor('relayed message', async () => x.got.length === 1, 5_000, 20);
    expect(x.got[0]).toMatchObject({ type: 'open_stream', session_id: 's-1' });
    // Local delivery on a.
    expect(await a.sendToAgent(id, openStream(2))).toBe(true);
    expect(x.got).toHaveLength(2);

    // The agent reconnects through b: b owns the key, a's stale socket is told to close.
    const y = fakeConn(id);
    await b.attach(y.conn);
    await waitFor('stale socket evicted', async () => x.closed.length === 1, 5_000, 20);
    expect(x.closed[0]).toBe(4409);
    // a's late detach must not delete b's key.
    await a.detach(x.conn);
    expect(JSON.parse((await redis.get(agentKey(id)))!)).toMatchObject({
      podId: b.podId,
      connId: y.conn.connId,
    });
    expect(await a.sendToAgent(id, openStream(3))).toBe(true);
    await waitFor('relayed to b', async () => y.got.length === 1, 5_000, 20);

    expect(await b.detach(y.conn)).toBe(true);
    expect(await redis.exists(agentKey(id))).toBe(0);
    expect(await a.sendToAgent(id, openStream(4))).toBe(false);
  });

  test('a key naming a pod nobody listens for yields false; keys are refreshed while attached', async () => {
    const a = await newHub('hub-c');
    const ghost = randomUUID();
    await redis.set(agentKey(ghost), JSON.stringify({ podId: `gone-${run}`, connId: 'c', agentId: 'g' }), 'PX', 5_000);
    expect(await a.sendToAgent(ghost, openStream(5))).toBe(false);
    await redis.del(agentKey(ghost));

    const id = randomUUID();
    const x = fakeConn(id);
    await a.attach(x.conn);
    // ttl 3 s, refreshed every second: still there after twice the TTL.
    await new Promise((r) => setTimeout(r, 6_000));
    expect(await redis.exists(agentKey(id))).toBe(1);
    // Removed behind the hub's back (Redis restarted empty): the next refresh puts it back.
    await redis.del(agentKey(id));
    await waitFor('key re-created', async () => (await redis.exists(agentKey(id))) === 1, 5_000, 100);
    await a.close();
    expect(await redis.exists(agentKey(id))).toBe(0);
  });

  test('lost Redis connections come back: gauge 0 → 1, channel re-subscribed, location re-asserted', async () => {
    const metrics = createMetrics();
    const a = await new RedisAgentHub({
      url: TEST_ENV.redisUrl,
      podId: `hub-d-${run}`,
      log: quiet,
      ttlMs: 60_000,
      metrics,
    }).connect();
    hubs.push(a);
    const b = await newHub('hub-e');
    expect(metrics.redisConnection.get()).toBe(1);
    const id = randomUUID();
    const x = fakeConn(id);
    await a.attach(x.conn);
    await redis.del(agentKey(id)); // as if Redis had restarted empty
    // Kill exactly this hub's two connections (by name), as a Redis restart or network cut would.
    const clients = ((await redis.call('CLIENT', 'LIST')) as string)
      .split('\n')
      .filter((l) => l.includes(`name=streamspace-hub-`) && l.includes(`-hub-d-${run} `));
    expect(clients).toHaveLength(2);
    for (const l of clients) await redis.call('CLIENT', 'KILL', 'ID', /\bid=(\d+)/.exec(l)![1]);
    await waitFor('gauge down', async () => metrics.redisConnection.get() === 0, 5_000, 5);
    await waitFor('gauge up again', async () => metrics.redisConnection.get() === 1, 10_000, 20);
    await waitFor('location re-asserted', async () => (await redis.exists(agentKey(id))) === 1, 5_000, 20);
    await waitFor('relay works again', async () => (await b.sendToAgent(id, openStream(6))) && x.got.length > 0, 5_000, 100);
    expect(x.got[0]).toMatchObject({ session_id: 's-6' });
    await a.close();
    expect(metrics.redisConnection.get()).toBe(0);
  });

  test('an unreachable Redis rejects connect() with the address and cause', async () => {
    const port = await freePort();
    await expect(
      new RedisAgentHub({
        url: `redis://:secret@127.0.0.1:${port}`,
        podId: 'x',
        log: quiet,
      }).connect(),
    ).rejects.toThrow(new RegExp(`cannot connect to redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port}.*ECONNREFUSED`));
  });
});
