/**
 * Bad input gets a clear 4xx with a reason and changes nothing; a malformed agent frame gets a
 * reason and crashes nothing.
 */
import jwt from 'jsonwebtoken';
import WebSocket from 'ws';
import { AGENT_CONNECT_PATH, PROTOCOL_VERSION } from '../protocol/messages';
import { Stack, waitFor } from './harness/stack';

jest.setTimeout(120_000);

describe('bad input is refused with a reason and changes nothing', () => {
  const stack = new Stack('validation');
  let admin: string;
  let alice: string;
  let bob: string;
  let aliceSession: string;

  const sessionCount = async () => Number((await stack.pool.query('SELECT count(*) FROM sessions')).rows[0].count);
  // Commands other than the start of alice's session (pending since beforeAll: it is placed on the
  // first docker agent that registers, which a test here may be).
  const commandCount = async () =>
    Number((await stack.pool.query('SELECT count(*) FROM agent_commands WHERE session_id IS DISTINCT FROM $1', [aliceSession])).rows[0].count);

  beforeAll(async () => {
    await stack.start();
    admin = await stack.login();
    for (const u of ['alice', 'bob']) {
      expect((await stack.call('POST', '/api/v1/users', { username: u, password: `${u}-password` }, admin)).status).toBe(201);
    }
    alice = await stack.login('alice', 'alice-password');
    bob = await stack.login('bob', 'bob-password');
    // No agent runs here: alice's session stays pending, which is all these tests need.
    aliceSession = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice)).body.id;
  });
  afterAll(() => stack.stop());

  test.each([
    ['unknown template', { template: 'no-such-template', platform: 'docker' }, 400, /unknown template "no-such-template"/],
    ['unknown platform', { template: 'terminal', platform: 'vmware' }, 400, /platform/],
    ['missing template', { platform: 'docker' }, 400, /must have required property 'template'/],
    ['missing platform', { template: 'terminal' }, 400, /must have required property 'platform'/],
    ['unknown field', { template: 'terminal', platform: 'docker', colour: 'blue' }, 400, /additional properties/],
    ['bad desired state', { template: 'terminal', platform: 'docker', state: 'hibernated' }, 400, /state/],
    ['session for another user', { user: 'bob', template: 'terminal', platform: 'docker' }, 403, /only admins/],
  ])('%s is refused', async (_name, body, status, reason) => {
    const before = await sessionCount();
    const r = await stack.call('POST', '/api/v1/sessions', body, alice);
    expect(r.status).toBe(status);
    expect(r.body.message).toMatch(reason);
    expect(await sessionCount()).toBe(before);
  });

  test('not JSON, and an oversize body', async () => {
    const before = await sessionCount();
    const notJson = await stack.call('POST', '/api/v1/sessions', '{"template":', alice);
    expect(notJson.status).toBe(400);
    const huge = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', tags: ['x'.repeat(200_000)] }, alice);
    expect(huge.status).toBe(413);
    expect(huge.body.message).toMatch(/too large/i);
    expect(await sessionCount()).toBe(before);
  });

  test('missing, malformed, forged and expired tokens → 401', async () => {
    const before = await sessionCount();
    const body = { template: 'terminal', platform: 'docker' };
    const none = await stack.call('POST', '/api/v1/sessions', body);
    expect(none.status).toBe(401);
    expect(none.body.message).toMatch(/missing bearer token/);
    expect((await stack.call('POST', '/api/v1/sessions', body, 'not-a-jwt')).status).toBe(401);
    const forged = jwt.sign({ role: 'admin', typ: 'user' }, 'wrong-secret', { subject: 'admin', expiresIn: 60 });
    expect((await stack.call('GET', '/api/v1/sessions', undefined, forged)).body.message).toBe('invalid token');
    const expired = stack.tokens.signUser('alice', 'user', -10);
    const r = await stack.call('GET', '/api/v1/sessions', undefined, expired);
    expect(r.status).toBe(401);
    expect(r.body.message).toBe('token expired');
    // An agent token is not a user credential.
    expect((await stack.call('GET', '/api/v1/sessions', undefined, stack.agentToken('docker-x'))).status).toBe(401);
    const wrongLogin = await stack.call('POST', '/api/v1/auth/login', { username: 'alice', password: 'nope' });
    expect(wrongLogin.status).toBe(401);
    expect(await sessionCount()).toBe(before);
  });

  test("another user's session is invisible and untouchable", async () => {
    expect((await stack.call('GET', `/api/v1/sessions/${aliceSession}`, undefined, bob)).status).toBe(404);
    for (const [method, path] of [
      ['DELETE', `/api/v1/sessions/${aliceSession}`],
      ['POST', `/api/v1/sessions/${aliceSession}/hibernate`],
      ['POST', `/api/v1/sessions/${aliceSession}/wake`],
      ['GET', `/api/v1/sessions/${aliceSession}/commands`],
    ]) {
      const r = await stack.call(method, path, undefined, bob);
      expect(r.status).toBe(404);
      expect(r.body.message).toMatch(/not found/);
    }
    expect((await stack.call('GET', '/api/v1/sessions', undefined, bob)).body).toEqual([]);
    const mine = await stack.call('GET', '/api/v1/sessions', undefined, alice);
    expect(mine.body.map((s: { id: string }) => s.id)).toEqual([aliceSession]);
    expect((await stack.call('GET', `/api/v1/sessions/${aliceSession}`, undefined, alice)).body.state).toBe('pending');
    // Admin-only routes refuse users.
    expect((await stack.call('GET', '/api/v1/agents', undefined, bob)).status).toBe(403);
    expect((await stack.call('POST', '/api/v1/users', { username: 'mallory', password: 'password123' }, bob)).status).toBe(403);
  });

  test('unknown agent token, a browser token, or a token for another agent: the agent socket is refused', async () => {
    const url = `ws://127.0.0.1:${stack.apiPort}${AGENT_CONNECT_PATH}`;
    const refusedWith = (headers: Record<string, string>) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const ws = new WebSocket(url, { headers });
        ws.on('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (d: Buffer) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode!, body }));
        });
        ws.on('open', () => reject(new Error('socket was accepted')));
        ws.on('error', () => undefined);
      });
    expect(await refusedWith({ authorization: 'Bearer not-a-token' })).toMatchObject({ status: 401, body: expect.stringMatching(/invalid token/) });
    expect(await refusedWith({})).toMatchObject({ status: 401, body: expect.stringMatching(/missing agent token/) });
    expect((await refusedWith({ authorization: `Bearer ${admin}` })).status).toBe(401);
    const agents = await stack.pool.query('SELECT count(*) FROM agents');
    expect(Number(agents.rows[0].count)).toBe(0);

    // A valid token for agent A cannot register as agent B.
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${stack.agentToken('docker-a')}` } });
    const closed = new Promise<{ code: number; reason: string }>((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    await new Promise((r) => ws.on('open', r));
    ws.send(JSON.stringify(register('docker-b')));
    expect(await closed).toMatchObject({ code: 4401, reason: expect.stringMatching(/token is for agent "docker-a"/) });
  });

  test('malformed agent frames get a reason; the gateway and the connection survive', async () => {
    const before = await commandCount();
    const ws = new WebSocket(`ws://127.0.0.1:${stack.agentPort}`, { headers: { authorization: `Bearer ${stack.agentToken('docker-m')}` } });
    const replies: any[] = [];
    ws.on('message', (d) => replies.push(JSON.parse(d.toString())));
    await new Promise((r) => ws.on('open', r));
    ws.send(JSON.stringify(register('docker-m')));
    await waitFor('registered', async () => replies.some((m) => m.type === 'registered'));
    const bad = [
      '{"type":"heartbeat"',
      '[{"type":"heartbeat","active_sessions":1},{"type":"heartbeat","active_sessions":1}]',
      '{"type":"teleport"}',
      '{"type":"completed","command_id":"not-a-uuid","result":{"state":"running"}}',
      '{"type":"heartbeat","active_sessions":-4}',
    ];
    for (const frame of bad) ws.send(frame);
    ws.send(Buffer.from([1, 2, 3]), { binary: true });
    await waitFor('six error replies', async () => replies.filter((m) => m.type === 'error').length === 6);
    const reasons = replies.filter((m) => m.type === 'error').map((m) => m.reason);
    expect(reasons).toEqual([
      expect.stringMatching(/not valid JSON/),
      expect.stringMatching(/one JSON object/),
      expect.stringMatching(/unknown message type "teleport"/),
      expect.stringMatching(/invalid completed message: \/command_id/),
      expect.stringMatching(/invalid heartbeat message: \/active_sessions/),
      expect.stringMatching(/binary frames are not allowed/),
    ]);
    expect(ws.readyState).toBe(WebSocket.OPEN);
    ws.send(JSON.stringify({ type: 'heartbeat', active_sessions: 0 }));
    expect((await stack.call('GET', '/health')).status).toBe(200);
    expect(await commandCount()).toBe(before);
    ws.close();
  });

  test('OpenAPI, health, readiness and metrics are served', async () => {
    const spec = await stack.call('GET', '/openapi.json');
    expect(spec.status).toBe(200);
    expect(Object.keys(spec.body.paths)).toEqual(expect.arrayContaining(['/api/v1/sessions', '/api/v1/sessions/{id}/hibernate', '/api/v1/auth/login']));
    expect((await stack.call('GET', '/ready')).body).toEqual({ status: 'ready', checks: { database: 'ok', temporal: 'ok' } });
    const metrics = await stack.call('GET', '/metrics');
    expect(metrics.body).toMatch(/streamspace_agent_protocol_errors_total \d+/);
    expect(metrics.body).toMatch(/streamspace_vnc_connection_failures_total/);
  });
});

function register(agentId: string) {
  return {
    type: 'register',
    protocol_version: PROTOCOL_VERSION,
    agent_id: agentId,
    platform: 'docker',
    capacity: { max_sessions: 1 },
    sessions: [],
  };
}
