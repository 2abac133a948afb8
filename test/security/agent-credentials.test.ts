/**
 * Issue 9, item 4: agent credentials are records; agents dial only their own control plane; the
 * Redis hub relays only what a pod signed.
 *
 * One stack with the Redis hub and a second API pod (as test/multi-pod.test.ts): pod 1 is the
 * Stack's gateway, pod 2 another gateway process on the same database and Redis.
 */
import { createHmac, randomUUID } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import Redis from 'ioredis';
import WebSocket, { WebSocketServer } from 'ws';
import { hashAgentToken } from '../../api/auth/agent-credentials';
import { hubSecretFromEnv, podChannel } from '../../api/agents/redis-hub';
import { AGENT_CONNECT_PATH, PROTOCOL_VERSION } from '../../protocol/messages';
import { TEST_ENV } from '../harness/env';
import { freePort, Proc, ROOT, sleep, Stack, waitFor } from '../harness/stack';

jest.setTimeout(240_000);

function register(agentId: string) {
  return { type: 'register', protocol_version: PROTOCOL_VERSION, agent_id: agentId, platform: 'docker', capacity: { max_sessions: 1 }, sessions: [] };
}

/** Tries to open an agent control socket; resolves with the refusal or the open socket. */
function dialAgent(port: number, token: string): Promise<{ status: number; body: string } | { ws: WebSocket }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${AGENT_CONNECT_PATH}`, { headers: { authorization: `Bearer ${token}` } });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    ws.on('open', () => resolve({ ws }));
    ws.on('error', reject);
  });
}

describe('agent credentials (two API pods, Redis hub)', () => {
  const POD1 = `sec-pod-1-${randomUUID().slice(0, 8)}`;
  const POD2 = POD1.replace('pod-1', 'pod-2');
  const stack = new Stack('agent-credentials', { AGENT_HUB_BACKEND: 'redis', REDIS_URL: TEST_ENV.redisUrl, POD_ID: POD1 });
  let pod2: Proc;
  let pod2Port = 0;
  let pod2AgentPort = 0;
  let admin: string;
  let redis: Redis;

  const mint = (body: Record<string, unknown>) => stack.call('POST', '/api/v1/agents/tokens', body, admin);
  const agentRow = async (agentId: string) =>
    (
      await stack.pool.query<{ id: string; status: string; websocket_conn_id: string | null }>(
        'SELECT id, status, websocket_conn_id FROM agents WHERE agent_id = $1',
        [agentId],
      )
    ).rows[0];

  beforeAll(async () => {
    redis = new Redis(TEST_ENV.redisUrl);
    await stack.start({ worker: false });
    pod2Port = await freePort();
    pod2AgentPort = await freePort();
    pod2 = new Proc(
      'api-2',
      'api/main.js',
      { ...stack.commonEnv, PORT: String(pod2Port), AGENT_WS_PORT: String(pod2AgentPort), HOST: '127.0.0.1', POD_ID: POD2 },
      stack.logDir,
    ).start();
    await pod2.waitForLog(/Server started/);
    admin = await stack.login();
  });

  afterAll(async () => {
    await pod2?.kill('SIGKILL');
    await stack.stop();
    await redis?.quit();
  });

  test('a minted token is a record holding only its hash; a second mint for a live agent id is 409', async () => {
    const r = await mint({ agent_id: 'sec-rec', description: 'rack 4' });
    expect(r.status).toBe(201);
    expect(r.body).toMatchObject({ agent_id: 'sec-rec', id: expect.any(String), token: expect.any(String), expires_at: null, revoked_at: null });
    const row = (await stack.pool.query('SELECT * FROM agent_tokens WHERE id = $1', [r.body.id])).rows[0];
    expect(row.token_hash).toBe(hashAgentToken(r.body.token));
    expect(JSON.stringify(row)).not.toContain(r.body.token);

    const again = await mint({ agent_id: 'sec-rec' });
    expect(again.status).toBe(409);
    expect(again.body.message).toMatch(/already has a live token.*rotate/);
    // Nothing changed: still one token, still live.
    const list = await stack.call('GET', '/api/v1/agents/sec-rec/tokens', undefined, admin);
    expect(list.body).toHaveLength(1);
    expect(list.body[0]).toMatchObject({ id: r.body.id, revoked_at: null });
    expect(list.body[0].token).toBeUndefined();
    // Bad input is refused with a reason.
    expect((await mint({ agent_id: 'sec-x', expires_in: 'forever' })).status).toBe(400);
    expect((await stack.call('DELETE', `/api/v1/agents/sec-rec/tokens/${randomUUID()}`, undefined, admin)).status).toBe(404);
  });

  test('revoking through pod 1 closes the agent socket pod 2 holds within 5 s; the token is then refused', async () => {
    const minted = await mint({ agent_id: 'sec-revoke' });
    const agent = await stack.startDockerAgent('sec-revoke', {
      AGENT_TOKEN: minted.body.token,
      CONTROL_PLANE_URL: `ws://127.0.0.1:${pod2AgentPort}`,
    });
    const before = await agentRow('sec-revoke');
    expect(before.status).toBe('online');
    const loc = JSON.parse((await redis.get(`streamspace:agent:${before.id}`))!);
    expect(loc.podId).toBe(POD2);

    const started = Date.now();
    const del = await stack.call('DELETE', `/api/v1/agents/sec-revoke/tokens/${minted.body.id}`, undefined, admin);
    expect(del.status).toBe(200);
    expect(del.body.revoked_at).not.toBeNull();
    await waitFor('agent socket closed', async () => (await agentRow('sec-revoke')).websocket_conn_id === null, 5_000, 50);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(pod2.output).toMatch(/closing agent socket: its token is no longer valid/);
    // The agent keeps trying and is refused with the reason.
    // One log line (pino JSON: fields in any order) with the refusal, its status and its reason.
    const refused = (l: string) => l.includes('control plane refused the agent') && /\b401\b/.test(l) && l.includes('agent token revoked');
    await waitFor('agent refused', async () => agent.output.split('\n').some(refused), 10_000);
    const r = await dialAgent(stack.agentPort, minted.body.token);
    expect(r).toMatchObject({ status: 401, body: expect.stringMatching(/agent token revoked/) });
    await agent.kill('SIGTERM');
  });

  test('expired tokens and tokens without a record are refused at connect; a live socket whose token expires is closed', async () => {
    // Expiry from the record alone (the token itself carries no exp).
    const id = randomUUID();
    const token = stack.tokens.signAgent('sec-exp', { tokenId: id });
    await stack.pool.query(`INSERT INTO agent_tokens (id, agent_id, token_hash, expires_at) VALUES ($1, 'sec-exp', $2, NOW() - INTERVAL '1 second')`, [
      id,
      hashAgentToken(token),
    ]);
    expect(await dialAgent(stack.agentPort, token)).toMatchObject({ status: 401, body: expect.stringMatching(/agent token expired/) });
    // Signed with the right key but never recorded (the pre-record format).
    expect(await dialAgent(stack.agentPort, stack.tokens.signAgent('sec-legacy'))).toMatchObject({
      status: 401,
      body: expect.stringMatching(/not recorded/),
    });
    // A record for another agent id does not admit the signed subject.
    const other = stack.tokens.signAgent('sec-victim', { tokenId: randomUUID() });
    await stack.pool.query(`INSERT INTO agent_tokens (agent_id, token_hash) VALUES ('sec-attacker', $1)`, [hashAgentToken(other)]);
    expect(await dialAgent(stack.agentPort, other)).toMatchObject({ status: 401 });

    // Minted with a 3 s lifetime: accepted now, closed once it expires (sweep every 2 s).
    const short = await mint({ agent_id: 'sec-short', expires_in: '3s' });
    expect(short.status).toBe(201);
    const dial = await dialAgent(stack.agentPort, short.body.token);
    if (!('ws' in dial)) throw new Error(`refused: ${dial.body}`);
    const replies: any[] = [];
    dial.ws.on('message', (d) => replies.push(JSON.parse(d.toString())));
    const closed = new Promise<{ code: number; reason: string }>((resolve) =>
      dial.ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })),
    );
    dial.ws.send(JSON.stringify(register('sec-short')));
    await waitFor('registered', async () => replies.some((m) => m.type === 'registered'), 5_000, 20);
    const heartbeats = setInterval(() => dial.ws.readyState === WebSocket.OPEN && dial.ws.send(JSON.stringify({ type: 'heartbeat', active_sessions: 0 })), 500);
    try {
      const c = await Promise.race([closed, sleep(9_000).then(() => null)]);
      expect(c).toMatchObject({ code: 4401, reason: expect.stringMatching(/revoked or expired/) });
    } finally {
      clearInterval(heartbeats);
    }
    expect(await dialAgent(stack.agentPort, short.body.token)).toMatchObject({ status: 401, body: expect.stringMatching(/expired/) });
  });

  test('rotate mints a new token and kills the old one (its live socket too); {rotate:true} does the same', async () => {
    const first = await mint({ agent_id: 'sec-rot' });
    const agent = await stack.startDockerAgent('sec-rot', { AGENT_TOKEN: first.body.token });
    const rot = await stack.call('POST', '/api/v1/agents/sec-rot/tokens/rotate', {}, admin);
    expect(rot.status).toBe(201);
    expect(rot.body).toMatchObject({ agent_id: 'sec-rot', revoked: [first.body.id] });
    expect(rot.body.token).not.toBe(first.body.token);
    await waitFor('old socket closed', async () => (await agentRow('sec-rot')).websocket_conn_id === null, 5_000, 50);
    expect(await dialAgent(stack.agentPort, first.body.token)).toMatchObject({ status: 401, body: expect.stringMatching(/revoked/) });
    // The agent, restarted with the new token, registers.
    await agent.kill('SIGTERM');
    stack.agents.delete('sec-rot');
    await stack.startDockerAgent('sec-rot', { AGENT_TOKEN: rot.body.token });
    expect((await agentRow('sec-rot')).status).toBe('online');

    const again = await mint({ agent_id: 'sec-rot', rotate: true });
    expect(again.status).toBe(201);
    expect(again.body.revoked).toEqual([rot.body.id]);
    await waitFor('rotated socket closed', async () => (await agentRow('sec-rot')).websocket_conn_id === null, 5_000, 50);
    const tokens = (await stack.call('GET', '/api/v1/agents/sec-rot/tokens', undefined, admin)).body as any[];
    expect(tokens.filter((t) => t.revoked_at === null).map((t) => t.id)).toEqual([again.body.id]);
    await stack.agents.get('sec-rot')!.kill('SIGTERM');
  });

  test('a message written to a pod channel with a raw Redis client is dropped; only a correctly signed one is acted on', async () => {
    await stack.startDockerAgent('sec-hub');
    const row = await agentRow('sec-hub');
    const connId = row.websocket_conn_id!;
    const channel = podChannel(POD1);
    // What the hub used to accept: a plain {agentDbId, evict}.
    expect(await redis.publish(channel, JSON.stringify({ agentDbId: row.id, evict: connId }))).toBeGreaterThan(0);
    // An envelope with a signature made with another key.
    const forge = (key: Buffer | string, ts = Date.now()) => {
      const p = JSON.stringify({ agentDbId: row.id, evict: connId });
      return JSON.stringify({ v: 1, ts, p, sig: createHmac('sha256', key).update(`msg\n${channel}\n${ts}\n${p}`).digest('base64url') });
    };
    await redis.publish(channel, forge('not-the-hub-secret'));
    const key = hubSecretFromEnv(stack.commonEnv)!;
    // Signed with the right key but old (a replay).
    await redis.publish(channel, forge(key, Date.now() - 120_000));
    await sleep(1_500);
    expect((await agentRow('sec-hub')).websocket_conn_id).toBe(connId);
    expect(stack.api.output).toMatch(/Redis AgentHub: dropped an unsigned or forged pod message/);
    // Control: the same message signed with the pods' key is acted on (so the drop above is the signature check).
    await redis.publish(channel, forge(key));
    await waitFor('evicted by a signed message', async () => (await agentRow('sec-hub')).websocket_conn_id !== connId, 5_000, 50);
    await stack.agents.get('sec-hub')!.kill('SIGTERM');
  });

  test('npm run agent-token writes a record, refuses a live agent id without --rotate', async () => {
    const { execFileSync, spawnSync } = await import('node:child_process');
    const env = { ...process.env, ...stack.commonEnv };
    const cli = [path.join(ROOT, 'dist/api/auth/agent-token-cli.js')];
    const token = execFileSync(process.execPath, [...cli, 'sec-cli'], { env, encoding: 'utf8' }).trim();
    expect((await stack.pool.query('SELECT agent_id FROM agent_tokens WHERE token_hash = $1', [hashAgentToken(token)])).rows).toEqual([
      { agent_id: 'sec-cli' },
    ]);
    const refused = spawnSync(process.execPath, [...cli, 'sec-cli'], { env, encoding: 'utf8' });
    expect(refused.status).toBe(1);
    expect(refused.stderr).toMatch(/already has a live token.*--rotate/);
    const rotated = spawnSync(process.execPath, [...cli, 'sec-cli', '--rotate', '--expires-in', '1h'], { env, encoding: 'utf8' });
    expect(rotated.status).toBe(0);
    expect(await dialAgent(stack.agentPort, token)).toMatchObject({ status: 401, body: expect.stringMatching(/revoked/) });
    const fresh = await dialAgent(stack.agentPort, rotated.stdout.trim());
    expect('ws' in fresh).toBe(true);
    if ('ws' in fresh) fresh.ws.close();
  });
});

describe('the agent dials stream URLs only on its control plane origin (or AGENT_STREAM_HOSTS)', () => {
  // A stand-in control plane (the agent under test is the real Docker agent process): it sends
  // open_stream messages as a compromised hub or pod could.
  const stack = new Stack('agent-stream-origin');
  let cp: WebSocketServer;
  let cpPort = 0;
  let foreign: net.Server;
  let foreignPort = 0;
  const foreignHits: string[] = [];
  const cpStreams: string[] = [];
  let control: WebSocket | null = null;
  const fromAgent: any[] = [];

  const startAgent = async (name: string, env: NodeJS.ProcessEnv = {}) => {
    control = null;
    const agent = stack.startAgentProcess(name, 'agents/docker/main.js', {
      AGENT_ID: name,
      AGENT_TOKEN: 'stand-in-control-plane-does-not-check',
      CONTROL_PLANE_URL: `ws://127.0.0.1:${cpPort}`,
      PLATFORM: 'docker',
      DOCKER_NETWORK: 'host',
      NETWORK_PREFIX: `sst${stack.id}`,
      ...env,
    });
    await waitFor('agent registered', async () => control !== null && fromAgent.some((m) => m.type === 'register' && m.agent_id === name), 30_000);
    return agent;
  };
  const openStream = (url: string) => {
    const stream_id = randomUUID();
    control!.send(JSON.stringify({ type: 'open_stream', stream_id, session_id: 'sess-x', url }));
    return stream_id;
  };

  beforeAll(async () => {
    foreign = net.createServer((s) => {
      s.once('data', (d) => foreignHits.push(d.toString('latin1')));
      s.on('error', () => undefined);
      setTimeout(() => s.destroy(), 500);
    });
    await new Promise<void>((r) => foreign.listen(0, '127.0.0.1', () => r()));
    foreignPort = (foreign.address() as net.AddressInfo).port;
    cp = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await new Promise((r) => cp.once('listening', r));
    cpPort = (cp.address() as net.AddressInfo).port;
    cp.on('connection', (ws, req) => {
      const path = (req.url ?? '/').split('?')[0];
      if (path !== AGENT_CONNECT_PATH) {
        cpStreams.push(`${req.url} ${req.headers.authorization ?? ''}`);
        ws.close();
        return;
      }
      control = ws;
      ws.on('message', (d) => {
        const m = JSON.parse(d.toString());
        fromAgent.push(m);
        if (m.type === 'register') ws.send(JSON.stringify({ type: 'registered', conn_id: randomUUID(), heartbeat_interval_ms: 10_000 }));
      });
    });
  });

  afterAll(async () => {
    for (const a of stack.agents.values()) await a.kill('SIGTERM');
    cp?.close();
    foreign?.close();
  });

  test('a foreign origin is refused and logged, never dialled; its own origin is', async () => {
    const agent = await startAgent('sec-origin');
    const foreignId = openStream(`ws://127.0.0.1:${foreignPort}/api/v1/agents/stream?stream_id=steal`);
    await waitFor('stream_error', async () => fromAgent.some((m) => m.type === 'stream_error' && m.stream_id === foreignId), 5_000, 20);
    expect(fromAgent.find((m) => m.stream_id === foreignId).error).toMatch(/stream URL refused/);
    expect(agent.output).toMatch(/refusing to dial a stream URL outside the control plane origin/);
    // Other tricks: another scheme, credentials in the URL, another host name for the same port.
    for (const url of [`http://127.0.0.1:${foreignPort}/x`, `ws://user:pw@127.0.0.1:${cpPort}/x`, `ws://localhost:${cpPort}/x`]) {
      const id = openStream(url);
      await waitFor('stream_error', async () => fromAgent.some((m) => m.type === 'stream_error' && m.stream_id === id), 5_000, 20);
      expect(fromAgent.find((m) => m.stream_id === id).error).toMatch(/stream URL refused/);
    }
    // Same origin (a relative URL, as the gateway sends without AGENT_STREAM_URL): dialled, with the token.
    openStream('/api/v1/agents/stream?stream_id=mine');
    await waitFor('stream dialled on the control plane', async () => cpStreams.some((s) => s.includes('stream_id=mine')), 10_000, 20);
    await sleep(500);
    expect(foreignHits).toEqual([]);
    await agent.kill('SIGTERM');
  });

  test('AGENT_STREAM_HOSTS admits the listed host:port (multi-pod AGENT_STREAM_URL), nothing else', async () => {
    const agent = await startAgent('sec-origin-list', { AGENT_STREAM_HOSTS: `127.0.0.1:${foreignPort}` });
    const otherPort = await freePort();
    const refused = openStream(`ws://127.0.0.1:${otherPort}/api/v1/agents/stream?stream_id=no`);
    await waitFor('stream_error', async () => fromAgent.some((m) => m.type === 'stream_error' && m.stream_id === refused), 5_000, 20);
    expect(fromAgent.find((m) => m.stream_id === refused).error).toMatch(/stream URL refused/);
    openStream(`ws://127.0.0.1:${foreignPort}/api/v1/agents/stream?stream_id=listed`);
    await waitFor('listed host dialled', async () => foreignHits.some((h) => h.includes('stream_id=listed')), 10_000, 20);
    await agent.kill('SIGTERM');
  });
});
