/**
 * Issue 13 item 2, idle hibernation from real input, on the real stack: a real session container
 * (Docker agent, the session image's VNC server) viewed through the gateway's tunnel by an RFB
 * client. An open but untouched viewer (update requests only) does not keep the session alive;
 * typing does; the maximum duration stops a session; limits come from the session, its template,
 * a PATCH, or an imported v1 session's own idleTimeout.
 */
import { RfbClient } from '../bench/rfb';
import { RfbInputScanner } from '../api/vnc/rfb-input';
import { sleep, Stack, waitFor } from './harness/stack';

jest.setTimeout(400_000);

/** What noVNC sends, as message bytes. */
const msg = {
  setPixelFormat: () => Buffer.concat([Buffer.from([0, 0, 0, 0]), Buffer.alloc(16, 1)]),
  setEncodings: (n: number) => {
    const b = Buffer.alloc(4 + 4 * n);
    b[0] = 2;
    b.writeUInt16BE(n, 2);
    return b;
  },
  fbur: () => Buffer.from([3, 1, 0, 0, 0, 0, 4, 0, 3, 0]),
  key: () => Buffer.from([4, 1, 0, 0, 0, 0, 0, 0x61]),
  pointer: () => Buffer.from([5, 0, 0, 10, 0, 20]),
  qemuKey: () => Buffer.from([255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 30]),
  fence: (len: number) => Buffer.concat([Buffer.from([248, 0, 0, 0, 0, 0, 0, 0, len]), Buffer.alloc(len, 7)]),
  resize: (screens: number) => Buffer.concat([Buffer.from([251, 0, 4, 0, 3, 0, screens, 0]), Buffer.alloc(16 * screens)]),
  cut: (text: string) => {
    const b = Buffer.alloc(8);
    b[0] = 6;
    b.writeInt32BE(text.length, 4);
    return Buffer.concat([b, Buffer.from(text)]);
  },
};
const HANDSHAKE = Buffer.concat([Buffer.from('RFB 003.008\n'), Buffer.from([1]), Buffer.from([1])]);

/** Feeds a stream to a scanner in chunks of the given sizes; returns which chunks held input. */
function scanChunks(stream: Buffer, sizes: number[]): boolean[] {
  const s = new RfbInputScanner();
  const out: boolean[] = [];
  let i = 0;
  for (let k = 0; i < stream.length; k++) {
    const n = sizes[k % sizes.length];
    out.push(s.scan(stream.subarray(i, i + n)));
    i += n;
  }
  return out;
}

describe('RFB input in the viewer stream', () => {
  test('update requests, formats, encodings, fences and resizes are not input, whatever the chunking', () => {
    const quiet = Buffer.concat([HANDSHAKE, msg.setPixelFormat(), msg.setEncodings(12), msg.fence(5), msg.resize(2), ...Array.from({ length: 20 }, msg.fbur)]);
    for (const sizes of [[1], [3, 7], [quiet.length], [13, 1, 64]]) expect(scanChunks(quiet, sizes).some(Boolean)).toBe(false);
  });
  test('key, pointer, QEMU key and clipboard messages are input, also split across chunks', () => {
    for (const input of [msg.key(), msg.pointer(), msg.qemuKey(), msg.cut('hello')]) {
      const stream = Buffer.concat([HANDSHAKE, msg.setEncodings(3), msg.fbur(), input, msg.fbur()]);
      for (const sizes of [[1], [5], [stream.length], [17, 2]]) expect(scanChunks(stream, sizes).some(Boolean)).toBe(true);
    }
    // RFB 3.3 viewers send no security type byte.
    const old = Buffer.concat([Buffer.from('RFB 003.003\n'), Buffer.from([1]), msg.fbur(), msg.key()]);
    expect(scanChunks(old, [old.length])).toEqual([true]);
    const oldQuiet = Buffer.concat([Buffer.from('RFB 003.003\n'), Buffer.from([1]), msg.fbur(), msg.fbur()]);
    expect(scanChunks(oldQuiet, [1])).not.toContain(true);
  });
  test('an unknown message type stops the scan (no guessing)', () => {
    const stream = Buffer.concat([HANDSHAKE, Buffer.from([99, 4, 0, 0]), msg.key()]);
    expect(scanChunks(stream, [stream.length])).toEqual([false]);
  });
});

describe('idle hibernation and maximum duration', () => {
  const stack = new Stack('idle');
  let alice: string;

  beforeAll(async () => {
    await stack.start();
    await stack.startDockerAgent('docker-idle-1', { VNC_PORT_RANGE: '15980-15989' });
    await stack.call('POST', '/api/v1/users', { username: 'alice', password: 'alice-password' }, await stack.login());
    alice = await stack.login('alice', 'alice-password');
  });
  afterAll(async () => {
    await stack.stop();
  });

  async function viewer(id: string): Promise<RfbClient> {
    const t = await stack.call('POST', `/api/v1/sessions/${id}/vnc-ticket`, undefined, alice);
    expect(t.status).toBe(201);
    const rfb = await RfbClient.websocket(`ws://127.0.0.1:${stack.apiPort}/api/v1/sessions/${id}/vnc?ticket=${t.body.ticket}`);
    await rfb.handshake();
    return rfb;
  }

  const get = async (id: string) => (await stack.call('GET', `/api/v1/sessions/${id}`, undefined, alice)).body;

  test('an open but untouched viewer does not keep a session alive; typing does, until it stops', async () => {
    const create = (body: object) => stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', ...body }, alice);
    const watched = (await create({ idle_timeout: '8s' })).body.id;
    const typed = (await create({ idle_timeout: '8s' })).body.id;
    await stack.waitForState(alice, watched, 'running', 120_000);
    await stack.waitForState(alice, typed, 'running', 120_000);

    const before = await get(watched);
    expect(before.lifetime).toMatchObject({ idle_timeout: '8s', max_session_duration: '8h', alive_because: 'started_recently', last_input_at: null });
    expect(new Date(before.lifetime.hibernates_at).getTime() - new Date(before.lifetime.running_since).getTime()).toBe(8000);

    const a = await viewer(watched);
    const b = await viewer(typed);
    const started = Date.now();
    // Both viewers ask for screen updates every 500 ms; only b's user types and moves the mouse.
    const ticker = setInterval(() => {
      a.request(0, 0, 64, 64, true);
      b.request(0, 0, 64, 64, true);
      b.key(0x61);
      b.pointer(10 + Math.floor(Math.random() * 100), 20);
    }, 500);
    try {
      const hibernated = await stack.waitForState(alice, watched, 'hibernated', 40_000);
      const idleFor = Date.now() - started;
      expect(hibernated.lifetime.alive_because).toBe('not_running');
      // Typed into for longer than its idle timeout: still running, and says why.
      await sleep(Math.max(0, 14_000 - idleFor));
      const alive = await get(typed);
      expect(alive.state).toBe('running');
      expect(alive.lifetime.alive_because).toBe('recent_input');
      expect(new Date(alive.lifetime.last_input_at).getTime()).toBeGreaterThan(Date.now() - 10_000);
      expect(new Date(alive.lifetime.hibernates_at).getTime()).toBeGreaterThan(Date.now());
      console.log(`untouched viewer: hibernated ${(idleFor / 1000).toFixed(1)} s after it opened (idle_timeout 8s); typed session alive at 14 s`);
    } finally {
      clearInterval(ticker);
    }
    // The user stops typing (the viewer stays open): it hibernates after the timeout.
    const stoppedTyping = Date.now();
    const keepAsking = setInterval(() => b.request(0, 0, 64, 64, true), 500);
    try {
      await stack.waitForState(alice, typed, 'hibernated', 40_000);
    } finally {
      clearInterval(keepAsking);
    }
    const after = Date.now() - stoppedTyping;
    expect(after).toBeGreaterThan(7000);
    console.log(`typing stopped: hibernated ${(after / 1000).toFixed(1)} s later`);
    a.close();
    b.close();
    // Each automatic hibernation is in v1's audit_log, by 'system' (written by the workflow once
    // the hibernation is done, so moments after the state shows it).
    const auditedRows = async () =>
      (await stack.pool.query(`SELECT user_id, resource_id FROM audit_log WHERE action = 'session.idle_hibernate' ORDER BY id`)).rows;
    await waitFor('both idle hibernations audited', async () => (await auditedRows()).length >= 2, 15_000).catch(() => undefined);
    expect(await auditedRows()).toEqual(
      expect.arrayContaining([
        { user_id: 'system', resource_id: watched },
        { user_id: 'system', resource_id: typed },
      ]),
    );
    // The container is stopped, not just the row: the session's VNC port no longer answers.
    expect((await stack.containers(watched)).every((c) => c.State !== 'running')).toBe(true);
  });

  test('the maximum duration stops a session; a PATCH re-plans the timers at once', async () => {
    const capped = (
      await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', idle_timeout: '0', max_session_duration: '10s' }, alice)
    ).body.id;
    const patched = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', idle_timeout: '0' }, alice)).body.id;
    const running = await stack.waitForState(alice, capped, 'running', 120_000);
    expect(running.lifetime).toMatchObject({ alive_because: 'idle_disabled', hibernates_at: null });
    const t0 = Date.now();
    await stack.waitForState(alice, capped, 'terminated', 60_000);
    const stopAudits = async () =>
      (await stack.pool.query(`SELECT 1 FROM audit_log WHERE action = 'session.max_duration_stop' AND resource_id = $1`, [capped])).rowCount;
    await waitFor('the stop audited', async () => (await stopAudits())! > 0, 15_000).catch(() => undefined);
    expect(await stopAudits()).toBe(1);
    console.log(`max_session_duration 10s: terminated ${((Date.now() - t0) / 1000).toFixed(1)} s after it was seen running`);

    await stack.waitForState(alice, patched, 'running', 120_000);
    await sleep(6000);
    expect((await get(patched)).state).toBe('running'); // idle hibernation off
    const p = await stack.call('PATCH', `/api/v1/sessions/${patched}`, { idle_timeout: '5s' }, alice);
    expect(p.status).toBe(200);
    expect(p.body.lifetime.idle_timeout).toBe('5s');
    // Idle since it started (over 6 s ago): the re-planned timer is already due.
    await stack.waitForState(alice, patched, 'hibernated', 20_000);

    // Bad values: a clear 400, nothing changed.
    expect((await stack.call('PATCH', `/api/v1/sessions/${patched}`, { idle_timeout: 'soon' }, alice)).status).toBe(400);
    expect((await stack.call('PATCH', `/api/v1/sessions/${patched}`, { idle_timeout: '1s' }, alice)).status).toBe(400);
    expect((await stack.call('PATCH', `/api/v1/sessions/${patched}`, {}, alice)).status).toBe(400);
    expect((await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', max_session_duration: '31d' }, alice)).status).toBe(400);
    expect((await get(patched)).lifetime.idle_timeout).toBe('5s');
  });

  test("an imported v1 session's idleTimeout is honoured once it is woken on v2", async () => {
    const admin = await stack.login();
    const crd = {
      apiVersion: 'stream.space/v1alpha1',
      kind: 'Session',
      metadata: { name: `alice-terminal-${stack.id}`, namespace: 'streamspace' },
      spec: { user: 'alice', template: 'terminal', state: 'hibernated', persistentHome: true, idleTimeout: '6s', maxSessionDuration: '8h' },
    };
    const imported = await stack.call('POST', '/api/v1/sessions/bulk-import?platform=docker', [crd], admin);
    expect(imported.body).toEqual(expect.objectContaining({ imported: 1, failed: 0 }));
    const id = crd.metadata.name;
    expect((await get(id)).lifetime).toMatchObject({ idle_timeout: '6s', alive_because: 'not_running' });
    const woke = await stack.call('POST', `/api/v1/sessions/${id}/wake?wait=60`, undefined, alice);
    expect(woke.body.state).toBe('running');
    const t0 = Date.now();
    await stack.waitForState(alice, id, 'hibernated', 40_000);
    console.log(`imported session (idleTimeout 6s): hibernated ${((Date.now() - t0) / 1000).toFixed(1)} s after its wake`);
  });
});
