/**
 * Issue 3 without a browser: authorisation of the viewer socket, the agent restarting during a
 * stream, and 500 connect/disconnect cycles leaving no socket or memory behind.
 */
import { readdirSync } from 'node:fs';
import WebSocket, { createWebSocketStream } from 'ws';
import { Stack, waitFor } from './harness/stack';
import { openViewer as openViewerOn } from './harness/viewer';

jest.setTimeout(300_000);

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

function sumMetric(text: string, name: string): number {
  return [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))].reduce((a, m) => a + Number(m[1]), 0);
}

const openFds = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

describe('VNC tunnel through the agent', () => {
  const stack = new Stack('vnc-tunnel', { VNC_TICKET_TTL: '2s', VNC_PROXY_TIMEOUT: '1500ms' });
  const AGENT = 'docker-vnc-1';
  let alice: string;
  let bob: string;
  let sessionId: string;

  const metrics = async () => (await stack.call('GET', '/metrics')).body as string;
  const ticket = async (token = alice, id = sessionId) => stack.call('POST', `/api/v1/sessions/${id}/vnc-ticket`, {}, token);

  const openViewer = (url: string) => openViewerOn(stack.apiPort, url);

  beforeAll(async () => {
    await stack.start();
    await stack.startDockerAgent(AGENT, { VNC_PORT_RANGE: '15950-15959', HEALTH_PORT: '0' });
    const admin = await stack.login();
    for (const u of ['alice', 'bob']) await stack.call('POST', '/api/v1/users', { username: u, password: `${u}-password` }, admin);
    alice = await stack.login('alice', 'alice-password');
    bob = await stack.login('bob', 'bob-password');
    sessionId = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice)).body.id;
    await stack.waitForState(alice, sessionId, 'running');
  });
  afterAll(() => stack.stop());

  test('the owner gets a stream to the session VNC server; several viewers at once', async () => {
    const a = await openViewer((await ticket()).body.url);
    const b = await openViewer((await ticket()).body.url);
    expect(a).toMatchObject({ greeting: 'RFB 003.008\n' });
    expect(b).toMatchObject({ greeting: 'RFB 003.008\n' });
    expect(metric(await metrics(), 'streamspace_vnc_active_tunnels')).toBe(2);
    for (const v of [a, b]) if ('ws' in v) v.ws.close();
    await waitFor('tunnels closed', async () => metric(await metrics(), 'streamspace_vnc_active_tunnels') === 0);
  });

  test("refused before any byte reaches the agent: another user's session, no ticket, reused or expired ticket", async () => {
    const requestedBefore = sumMetric(await metrics(), 'streamspace_vnc_connections_total');
    const bobs = await ticket(bob);
    expect(bobs.status).toBe(404);

    expect(await openViewer(`/api/v1/sessions/${sessionId}/vnc`)).toMatchObject({ status: 401, body: expect.stringMatching(/missing ticket/) });
    expect(await openViewer(`/api/v1/sessions/${sessionId}/vnc?ticket=forged`)).toMatchObject({ status: 401 });

    const t = (await ticket()).body;
    const first = await openViewer(t.url);
    expect(first).toMatchObject({ greeting: 'RFB 003.008\n' });
    if ('ws' in first) first.ws.close();
    expect(await openViewer(t.url)).toMatchObject({ status: 401, body: expect.stringMatching(/already used/) });

    const late = (await ticket()).body;
    await new Promise((r) => setTimeout(r, 2500)); // VNC_TICKET_TTL is 2s in this stack
    expect(await openViewer(late.url)).toMatchObject({ status: 401, body: expect.stringMatching(/expired/) });

    // A ticket is bound to its session: alice's ticket for session A cannot open session B.
    const other = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, bob)).body.id;
    const wrong = (await ticket()).body.url.replace(sessionId, other);
    expect(await openViewer(wrong)).toMatchObject({ status: 401 });

    // Only the one legitimate viewer above reached the agent.
    expect(sumMetric(await metrics(), 'streamspace_vnc_connections_total')).toBe(requestedBefore + 1);
    expect(sumMetric(await metrics(), 'streamspace_vnc_connection_failures_total')).toBeGreaterThanOrEqual(4);
    await stack.call('DELETE', `/api/v1/sessions/${other}`, undefined, bob);
  });

  test('the agent restarting during a stream closes the stream on every side; a new stream works once it is back', async () => {
    const v = await openViewer((await ticket()).body.url);
    if (!('ws' in v)) throw new Error(`refused: ${v.status}`);
    const closed = new Promise<number>((r) => v.ws.on('close', (code) => r(code)));
    await stack.agents.get(AGENT)!.kill('SIGKILL');
    expect(await closed).toBeGreaterThanOrEqual(1000);
    await waitFor('tunnel gone', async () => metric(await metrics(), 'streamspace_vnc_active_tunnels') === 0);
    // While the agent is away the viewer is told why, instead of hanging.
    const away = await openViewer((await ticket()).body.url);
    expect(away).toMatchObject({ status: 502, body: expect.stringMatching(/not connected/) });
    await stack.startDockerAgent(AGENT);
    const again = await openViewer((await ticket()).body.url);
    expect(again).toMatchObject({ greeting: 'RFB 003.008\n' });
    if ('ws' in again) again.ws.close();
    await waitFor('tunnel closed', async () => metric(await metrics(), 'streamspace_vnc_active_tunnels') === 0);
  });

  test('an idle tunnel closes after VNC_PROXY_TIMEOUT', async () => {
    const v = await openViewer((await ticket()).body.url);
    if (!('ws' in v)) throw new Error(`refused: ${v.status}`);
    const opened = Date.now();
    const code = await new Promise<number>((r) => v.ws.on('close', (c) => r(c)));
    expect(Date.now() - opened).toBeGreaterThanOrEqual(1000);
    expect(code).toBe(1000);
    await waitFor('tunnel gone', async () => metric(await metrics(), 'streamspace_vnc_active_tunnels') === 0);
  });

  test('500 connect/disconnect cycles: sockets back to baseline, heap stable', async () => {
    const apiPid = stack.api.child!.pid!;
    const agentPid = stack.agents.get(AGENT)!.child!.pid!;
    // Warm up (JIT, pools), then take the baseline.
    for (let i = 0; i < 20; i++) await cycle();
    await new Promise((r) => setTimeout(r, 500));
    const base = { api: openFds(apiPid), agent: openFds(agentPid) };
    const heapBefore = metric(await metrics(), 'streamspace_process_heap_bytes');
    for (let i = 0; i < 500; i++) await cycle();
    await waitFor('tunnels closed', async () => metric(await metrics(), 'streamspace_vnc_active_tunnels') === 0);
    const after = await waitFor(
      'file descriptors back to baseline',
      async () => {
        const now = { api: openFds(apiPid), agent: openFds(agentPid) };
        return now.api <= base.api + 2 && now.agent <= base.agent + 2 ? now : undefined;
      },
      15_000,
      250,
    );
    const heapAfter = metric(await metrics(), 'streamspace_process_heap_bytes');
    console.log(
      `leak test: fds api ${base.api}→${after.api}, agent ${base.agent}→${after.agent}; heap ${(heapBefore / 1e6).toFixed(1)}→${(heapAfter / 1e6).toFixed(1)} MB`,
    );
    expect(heapAfter - heapBefore).toBeLessThan(30 * 1024 * 1024);

    async function cycle() {
      const t = await ticket();
      const ws = new WebSocket(`ws://127.0.0.1:${stack.apiPort}${t.body.url}`);
      const s = createWebSocketStream(ws);
      await new Promise<void>((resolve, reject) => {
        let n = 0;
        s.on('data', (d: Buffer) => {
          n += d.length;
          if (n >= 12) resolve();
        });
        s.on('error', reject);
      });
      await new Promise<void>((resolve) => {
        ws.once('close', () => resolve());
        ws.close();
      });
    }
  });
});
