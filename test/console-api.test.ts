/**
 * Issue 12, the API behind the console, on the real stack (gateway, worker, PostgreSQL, Temporal,
 * protocol-faithful fake agents): the session list searched, filtered, sorted and paged in the
 * database across all pages; the live stream (PostgreSQL NOTIFY → SSE) with catch-up after a
 * gateway restart; bulk actions and retry of failed sessions; v1 Template manifests with
 * line-numbered errors; quotas; migration runs' failures as CSV; the console page itself.
 */
import { randomUUID } from 'node:crypto';
import { Client } from 'pg';
import { sleep, Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

interface SseEvent {
  event: string;
  id: string | null;
  data: any;
  at: number;
}

/** A live stream as a browser holds it: events in arrival order, closed on demand. */
class Stream {
  readonly events: SseEvent[] = [];
  private readonly ctrl = new AbortController();
  status = 0;
  ended = false;

  static async open(url: string, token: string, lastEventId?: string): Promise<Stream> {
    const s = new Stream();
    const res = await fetch(url + '/api/v1/events', {
      headers: { authorization: `Bearer ${token}`, ...(lastEventId ? { 'last-event-id': lastEventId } : {}) },
      signal: s.ctrl.signal,
    });
    s.status = res.status;
    if (res.ok && res.body) void s.read(res.body);
    return s;
  }

  private async read(body: ReadableStream<Uint8Array>): Promise<void> {
    const dec = new TextDecoder();
    let buf = '';
    try {
      for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
        buf += dec.decode(chunk, { stream: true });
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let event = 'message';
          let id: string | null = null;
          const data: string[] = [];
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) event = line.slice(7);
            else if (line.startsWith('id: ')) id = line.slice(4);
            else if (line.startsWith('data: ')) data.push(line.slice(6));
          }
          if (data.length) this.events.push({ event, id, data: JSON.parse(data.join('\n')), at: Date.now() });
        }
      }
    } catch {
      // aborted or the server went away
    }
    this.ended = true;
  }

  lastId(): string | undefined {
    return [...this.events].reverse().find((e) => e.id)?.id ?? undefined;
  }

  sessions(id: string): any[] {
    return this.events.filter((e) => e.event === 'session' && e.data.id === id).map((e) => e.data);
  }

  close(): void {
    this.ctrl.abort();
  }
}

describe('the console API', () => {
  // Short start timeout: the retry test lets a start time out on a slow agent.
  const stack = new Stack('console-api', { SESSION_START_TIMEOUT: '4s' });
  let admin: string;
  let alice: string;
  let aliceId: string;
  const streams: Stream[] = [];

  beforeAll(async () => {
    await stack.start();
    // Hibernate, wake and stop take a moment on this agent, so their transitions can be seen.
    await stack.startFakeAgent('docker-console-api-1', { FAKE_OP_DELAY: '800ms' });
    admin = await stack.login();
    for (const u of ['alice', 'bob']) expect((await stack.call('POST', '/api/v1/users', { username: u, password: `${u}-password` }, admin)).status).toBe(201);
    alice = await stack.login('alice', 'alice-password');
    aliceId = (await stack.pool.query(`SELECT id::text AS id FROM users WHERE username = 'alice'`)).rows[0].id;
  });
  afterAll(async () => {
    for (const s of streams) s.close();
    await stack.stop();
  });

  test('the list is searched, filtered, sorted and paged in the database, across all pages', async () => {
    // 60 rows for alice and 10 for bob, written as rows (the list does not need workflows), with
    // ties on the sort keys so the keyset must use the id to page without loss or repeats.
    const bobId = (await stack.pool.query(`SELECT id::text AS id FROM users WHERE username = 'bob'`)).rows[0].id;
    const templates = ['firefox', 'terminal', 'vscode', 'gimp'];
    const states = ['running', 'hibernated', 'terminated'];
    for (let i = 0; i < 70; i++) {
      await stack.pool.query(
        `INSERT INTO sessions (id, user_id, template_name, state, platform, created_at, last_activity, tags)
         VALUES ($1, $2, $3, $4, 'docker', NOW() - ($5 || ' minutes')::interval, NULLIF($6, '')::timestamp, '[]'::jsonb)`,
        [
          `list-${String(i).padStart(2, '0')}-${randomUUID().slice(0, 8)}`,
          i < 60 ? aliceId : bobId,
          templates[i % 4],
          states[i % 3],
          String(i % 7),
          i % 5 ? '' : new Date(Date.now() - i * 1000).toISOString(),
        ],
      );
    }
    const ours = (await stack.pool.query(`SELECT count(*)::int AS n FROM sessions WHERE user_id = $1`, [aliceId])).rows[0].n;

    // Default: the spec's plain array, the total in a header, no cursor when everything fits.
    const all = await fetch(`${stack.url}/api/v1/sessions`, { headers: { authorization: `Bearer ${alice}` } });
    const allBody = (await all.json()) as any[];
    expect(Array.isArray(allBody)).toBe(true);
    expect(allBody).toHaveLength(ours);
    expect(all.headers.get('x-total-count')).toBe(String(ours));
    expect(all.headers.get('x-next-cursor')).toBeNull();
    expect(allBody.every((s) => s.user === 'alice')).toBe(true); // users see their own only

    for (const [sort, order] of [
      ['template', 'asc'],
      ['created_at', 'desc'],
      ['last_activity', 'desc'],
      ['state', 'asc'],
    ] as const) {
      const pages: any[][] = [];
      let cursor: string | null = null;
      do {
        const res: Response = await fetch(`${stack.url}/api/v1/sessions?sort=${sort}&order=${order}&limit=7${cursor ? `&cursor=${cursor}` : ''}`, {
          headers: { authorization: `Bearer ${alice}` },
        });
        expect(res.status).toBe(200);
        expect(res.headers.get('x-total-count')).toBe(String(ours));
        pages.push((await res.json()) as any[]);
        cursor = res.headers.get('x-next-cursor');
        if (cursor) expect(res.headers.get('link')).toContain('rel="next"');
      } while (cursor);
      const ids = pages.flat().map((s) => s.id);
      expect(new Set(ids).size).toBe(ours); // every row once, none twice
      expect(ids).toHaveLength(ours);
      expect(pages.slice(0, -1).every((p) => p.length === 7)).toBe(true);
      // The same order as the database gives for the whole set.
      const col = {
        template: 'template_name',
        created_at: `COALESCE(created_at, 'epoch'::timestamp)`,
        state: 'state',
        last_activity: `COALESCE(last_activity, updated_at, created_at)`,
      }[sort];
      const want = await stack.pool.query(`SELECT id FROM sessions WHERE user_id = $1 ORDER BY ${col} ${order}, id ${order}`, [aliceId]);
      expect(ids).toEqual(want.rows.map((r) => r.id));
    }

    // Search and filters are applied before paging: the total counts all matching rows.
    const vs = await fetch(`${stack.url}/api/v1/sessions?q=vsco&state=running&limit=2`, { headers: { authorization: `Bearer ${alice}` } });
    const vsWant = (
      await stack.pool.query(`SELECT count(*)::int AS n FROM sessions WHERE user_id = $1 AND template_name = 'vscode' AND state = 'running'`, [aliceId])
    ).rows[0].n;
    expect(vs.headers.get('x-total-count')).toBe(String(vsWant));
    expect(((await vs.json()) as any[]).every((s) => s.template === 'vscode' && s.state === 'running')).toBe(true);
    // A search for a wildcard character is a literal search.
    expect((await stack.call('GET', '/api/v1/sessions?q=%25', undefined, alice)).body).toEqual([]);
    // Admins filter by user.
    const bobs = await stack.call('GET', '/api/v1/sessions?user=bob', undefined, admin);
    expect(bobs.body).toHaveLength(10);

    // Bad input: a clear 400, nothing else.
    const bad = await stack.call('GET', '/api/v1/sessions?sort=password', undefined, alice);
    expect(bad.status).toBe(400);
    expect((await stack.call('GET', '/api/v1/sessions?cursor=not-a-cursor', undefined, alice)).status).toBe(400);
    const first = await fetch(`${stack.url}/api/v1/sessions?sort=template&limit=5`, { headers: { authorization: `Bearer ${alice}` } });
    const mismatch = await stack.call('GET', `/api/v1/sessions?sort=state&limit=5&cursor=${first.headers.get('x-next-cursor')}`, undefined, alice);
    expect(mismatch.status).toBe(400);
    expect(mismatch.body.message).toMatch(/sort=template/);
    expect((await stack.call('GET', '/api/v1/sessions?limit=5000', undefined, alice)).status).toBe(400);
    await stack.pool.query(`DELETE FROM sessions WHERE id LIKE 'list-%'`);
  });

  test('state changes reach the stream at once, only to their owner, and a stream resumed after a gateway restart catches up', async () => {
    const a = await Stream.open(stack.url, alice);
    const b = await Stream.open(stack.url, await stack.login('bob', 'bob-password'));
    const adm = await Stream.open(stack.url, admin);
    streams.push(a, b, adm);
    expect([a.status, b.status, adm.status]).toEqual([200, 200, 200]);
    await sleep(300);

    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice);
    expect(created.status).toBe(201);
    const id = created.body.id;
    const running = await waitFor('the running event', async () => a.sessions(id).find((s) => s.state === 'running'), 15_000);
    expect(running.agent_id).toBe('docker-console-api-1');
    // The row's own change time vs the event's arrival: within a second.
    const changedAt = (await stack.pool.query(`SELECT updated_at FROM sessions WHERE id = $1`, [id])).rows[0].updated_at as Date;
    const arrived = a.events.find((e) => e.event === 'session' && e.data.id === id && e.data.state === 'running')!.at;
    expect(arrived - changedAt.getTime()).toBeLessThan(1000);
    expect(b.sessions(id)).toEqual([]); // bob never hears of alice's session
    expect(adm.sessions(id).some((s) => s.state === 'running')).toBe(true); // admins see all

    // A transition is pushed while it runs (from the open command), then its outcome.
    expect((await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, alice)).status).toBe(200);
    await waitFor('the hibernated event', async () => a.sessions(id).find((s) => s.state === 'hibernated'), 15_000);
    expect(a.sessions(id).some((s) => s.transition === 'hibernating')).toBe(true);

    // The gateway dies; meanwhile a session of alice's is written (as v1 writes rows; no agent
    // holds it, so nothing but the catch-up can tell the stream about it).
    const lastId = a.lastId()!;
    expect(lastId).toMatch(/^\d+$/);
    a.close();
    await stack.api.kill('SIGKILL');
    const whileDown = `down-${randomUUID()}`;
    await stack.pool.query(`INSERT INTO sessions (id, user_id, template_name, state, platform) VALUES ($1, $2, 'terminal', 'hibernated', 'docker')`, [
      whileDown,
      aliceId,
    ]);
    stack.api.start();
    await stack.api.waitForLog(/Server started/);
    const resumed = await Stream.open(stack.url, alice, lastId);
    streams.push(resumed);
    const replay = await waitFor('the catch-up', async () => resumed.sessions(whileDown)[0], 10_000);
    expect(replay).toMatchObject({ state: 'hibernated', user: 'alice' });
    expect(Number(resumed.events.find((e) => e.event === 'session' && e.data.id === whileDown)!.id)).toBeGreaterThan(Number(lastId));
    // And the live feed continues on the new stream.
    expect((await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, alice)).status).toBe(200);
    await waitFor('the terminated event', async () => resumed.sessions(id).find((s) => s.state === 'terminated'), 15_000);
    // The row says "terminating" while the agent stops it (written by the stop command's own local activity).
    expect(resumed.sessions(id).map((s) => s.state)).toEqual(expect.arrayContaining(['terminating', 'terminated']));
    await stack.pool.query(`DELETE FROM sessions WHERE id = $1`, [whileDown]);

    // Bad Last-Event-ID: refused, not replayed from zero.
    const badId = await fetch(`${stack.url}/api/v1/events`, { headers: { authorization: `Bearer ${alice}`, 'last-event-id': 'x; DROP' } });
    expect(badId.status).toBe(400);
    expect((await fetch(`${stack.url}/api/v1/events`)).status).toBe(401);
  });

  test('agent status changes reach admins, heartbeats alone send nothing', async () => {
    const adm = await Stream.open(stack.url, admin);
    streams.push(adm);
    await stack.startFakeAgent('docker-console-api-2');
    await waitFor(
      'online event',
      async () => adm.events.find((e) => e.event === 'agent' && e.data.agent_id === 'docker-console-api-2' && e.data.status === 'online'),
      10_000,
    );
    const before = adm.events.filter((e) => e.event === 'agent').length;
    await sleep(3000); // several heartbeats
    expect(adm.events.filter((e) => e.event === 'agent').length).toBe(before);
    await stack.agents.get('docker-console-api-2')!.kill('SIGKILL');
    const off = await waitFor(
      'offline event',
      async () => adm.events.find((e) => e.event === 'agent' && e.data.agent_id === 'docker-console-api-2' && e.data.status === 'offline'),
      60_000,
    );
    expect(off.data.health).toBe('offline');
    const list = await stack.call('GET', '/api/v1/agents', undefined, admin);
    const one = list.body.find((x: any) => x.agent_id === 'docker-console-api-1');
    expect(one).toMatchObject({ status: 'online', health: 'online', capacity: { max_sessions: 50 } });
    expect(typeof one.heartbeat_age_s).toBe('number');
  });

  test('bulk actions handle each session on its own; a failed session is retried under the same id', async () => {
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) ids.push((await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice)).body.id);
    for (const id of ids) await stack.waitForState(alice, id, 'running');
    const bob = await stack.login('bob', 'bob-password');
    const bobs = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, bob)).body.id;

    const r = await stack.call('POST', '/api/v1/sessions/bulk', { action: 'hibernate', ids: [...ids, 'no-such-session', bobs] }, alice);
    expect(r.status).toBe(200);
    expect(r.body.results.map((x: any) => [x.id, x.ok, x.status])).toEqual([
      [ids[0], true, expect.any(Number)],
      [ids[1], true, expect.any(Number)],
      [ids[2], true, expect.any(Number)],
      ['no-such-session', false, 404],
      [bobs, false, 404], // someone else's session is not even disclosed
    ]);
    for (const id of ids) await stack.waitForState(alice, id, 'hibernated');
    expect((await stack.call('POST', '/api/v1/sessions/bulk', { action: 'explode', ids }, alice)).status).toBe(400);
    expect((await stack.call('POST', '/api/v1/sessions/bulk', { action: 'stop', ids: [] }, alice)).status).toBe(400);
    const stop = await stack.call('POST', '/api/v1/sessions/bulk', { action: 'stop', ids }, alice);
    expect(stop.body.results.every((x: any) => x.ok)).toBe(true);
    for (const id of ids) await stack.waitForState(alice, id, 'terminated');
    const again = await stack.call('POST', '/api/v1/sessions/bulk', { action: 'wake', ids: [ids[0]] }, alice);
    expect(again.body.results[0]).toMatchObject({ ok: false, status: 409 });

    // A start that times out on a slow agent (its command withdrawn), then a retry on a fast one.
    // (Only the slow agent is online for it: the others are taken away meanwhile.)
    await stack.agents.get('docker-console-api-1')!.kill('SIGKILL');
    await stack.pool.query(`UPDATE agents SET status = 'offline' WHERE agent_id <> 'docker-console-slow'`);
    await stack.startFakeAgent('docker-console-slow', { FAKE_START_DELAY: '30s' });
    const failed = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice)).body.id;
    const f = await waitFor('the start to fail', async () => {
      const s = await stack.call('GET', `/api/v1/sessions/${failed}`, undefined, alice);
      return s.body.state === 'failed' ? s.body : undefined;
    });
    expect(f.error).toMatch(/start timed out/);
    expect((await stack.call('POST', `/api/v1/sessions/${ids[0]}/retry`, undefined, alice)).status).toBe(409); // terminated, not failed
    await stack.agents.get('docker-console-slow')!.kill('SIGKILL');
    await stack.pool.query(`UPDATE agents SET status = 'offline' WHERE agent_id = 'docker-console-slow'`);
    await stack.startFakeAgent('docker-console-api-1');
    const retried = await stack.call('POST', '/api/v1/sessions/bulk', { action: 'retry', ids: [failed] }, alice);
    expect(retried.body.results[0]).toMatchObject({ ok: true, status: 202 });
    const ok = await stack.waitForState(alice, failed, 'running');
    expect(ok.agent_id).toBe('docker-console-api-1');
    expect(ok.error).toBeNull();
    // The retry's commands go on from the first run's: new idempotency keys, a higher generation.
    const cmds = await stack.pool.query(`SELECT command_type, status, generation FROM agent_commands WHERE session_id = $1 ORDER BY generation`, [failed]);
    const starts = cmds.rows.filter((c) => c.command_type === 'start_session');
    expect(starts).toHaveLength(2);
    expect(starts[0].status).toBe('failed');
    expect(starts[1]).toMatchObject({ status: 'completed' });
    expect(starts[1].generation).toBeGreaterThan(starts[0].generation);
    expect((await stack.call('POST', `/api/v1/sessions/${failed}/retry`, undefined, alice)).status).toBe(409);
  });

  test('v1 Template manifests: every mistake with its line; saved, edited and served by the catalog', async () => {
    const broken = [
      'apiVersion: stream.space/v1alpha1',
      'kind: Template',
      'metadata:',
      '  name: Bad_Name',
      'spec:',
      '  displayName: Inkscape',
      '  baseImage: lscr.io/linuxserver/inkscape:latest',
      '  defaultResources:',
      '    memory: lots',
      '  ports:',
      '    - name: vnc',
      '      containerPort: 99999',
    ].join('\n');
    const v = await stack.call('POST', '/api/v1/templates/validate', { source: broken }, admin);
    expect(v.status).toBe(200);
    expect(v.body.valid).toBe(false);
    const byPath = Object.fromEntries(v.body.errors.map((e: any) => [e.path, e.line]));
    expect(byPath).toEqual({ 'metadata.name': 4, 'spec.defaultResources.memory': 9, 'spec.ports[0].containerPort': 12 });
    const syntax = await stack.call('POST', '/api/v1/templates/validate', { source: 'kind: Template\nspec: [\n' }, admin);
    expect(syntax.body.valid).toBe(false);
    expect(syntax.body.errors[0].line).toBeGreaterThan(1);
    // Refused on save with the same list; nothing written.
    const refused = await stack.call('POST', '/api/v1/templates', { source: broken }, admin);
    expect(refused.status).toBe(400);
    expect(refused.body.errors).toHaveLength(3);
    expect((await stack.pool.query(`SELECT 1 FROM templates WHERE display_name = 'Inkscape'`)).rowCount).toBe(0);

    const good = broken.replace('Bad_Name', 'inkscape').replace('lots', '2Gi').replace('99999', '5901');
    expect((await stack.call('POST', '/api/v1/templates', { source: good }, admin)).status).toBe(201);
    expect((await stack.call('POST', '/api/v1/templates', { source: good }, admin)).status).toBe(409);
    const listed = (await stack.call('GET', '/api/v1/templates', undefined, alice)).body.find((t: any) => t.name === 'inkscape');
    expect(listed).toMatchObject({ display_name: 'Inkscape', image: 'lscr.io/linuxserver/inkscape:latest', resources: { memory: '2Gi', cpu: null } });
    const edited = await stack.call('PUT', '/api/v1/templates/inkscape', { source: good.replace('displayName: Inkscape', 'displayName: Inkscape 1.3') }, admin);
    expect(edited.status).toBe(200);
    expect(edited.body.display_name).toBe('Inkscape 1.3');
    expect((await stack.call('PUT', '/api/v1/templates/inkscape', { source: good.replace('name: inkscape', 'name: other') }, admin)).status).toBe(400);
    expect((await stack.call('GET', '/api/v1/templates/inkscape', undefined, alice)).body.manifest.spec.displayName).toBe('Inkscape 1.3');
    expect((await stack.call('POST', '/api/v1/templates', { source: good }, alice)).status).toBe(403);
    // A session of the new template can be created.
    expect((await stack.call('POST', '/api/v1/sessions', { template: 'inkscape', platform: 'docker' }, alice)).status).toBe(201);
  });

  test('quotas are read and written in user_quotas; bad values are refused', async () => {
    const set = await stack.call('PUT', '/api/v1/users/alice/quota', { max_sessions: 3, max_cpu: '2000m', max_memory: '8Gi' }, admin);
    expect(set.status).toBe(200);
    const row = (await stack.pool.query(`SELECT max_sessions, max_cpu, max_memory FROM user_quotas WHERE user_id = $1`, [aliceId])).rows[0];
    expect(row).toEqual({ max_sessions: 3, max_cpu: '2000m', max_memory: '8Gi' });
    const users = (await stack.call('GET', '/api/v1/users', undefined, admin)).body;
    expect(users.find((u: any) => u.username === 'alice').quota).toEqual({ max_sessions: 3, max_cpu: '2000m', max_memory: '8Gi' });
    expect(users.find((u: any) => u.username === 'bob').quota).toBeNull();
    expect((await stack.call('PUT', '/api/v1/users/alice/quota', { max_sessions: 3, max_cpu: 'all', max_memory: '8Gi' }, admin)).status).toBe(400);
    expect((await stack.call('PUT', '/api/v1/users/alice/quota', { max_sessions: -1, max_cpu: '1', max_memory: '8Gi' }, admin)).status).toBe(400);
    expect((await stack.call('PUT', '/api/v1/users/nobody/quota', { max_sessions: 1, max_cpu: '1', max_memory: '1Gi' }, admin)).status).toBe(404);
    expect((await stack.call('PUT', '/api/v1/users/alice/quota', { max_sessions: 9, max_cpu: '1', max_memory: '1Gi' }, alice)).status).toBe(403);
  });

  test("a migration run's failed rows download as CSV, safe to open in a spreadsheet", async () => {
    const c = new Client({ connectionString: stack.databaseUrl });
    await c.connect();
    try {
      // The import phase's bookkeeping table (activities/migration/phases/import.ts), as it creates it.
      await c.query(`CREATE TABLE IF NOT EXISTS migration_import_results (
        run_id VARCHAR(255) NOT NULL, kind VARCHAR(20) NOT NULL, source_id VARCHAR(255) NOT NULL,
        namespace VARCHAR(255) NOT NULL DEFAULT '', status VARCHAR(20) NOT NULL, reason TEXT,
        imported_at TIMESTAMP DEFAULT NOW(), via VARCHAR(10), source_version VARCHAR(64), PRIMARY KEY (run_id, kind, source_id, namespace))`);
      await c.query(
        `INSERT INTO migration_import_results (run_id, kind, source_id, namespace, status, reason, via) VALUES
           ('run-csv', 'session', 'alice-firefox', 'streamspace', 'failed', 'template "firefox" unknown, "quoted", a,b', 'crd'),
           ('run-csv', 'session', 'evil', 'streamspace', 'failed', '=HYPERLINK("http://x")', 'db'),
           ('run-csv', 'session', 'fine', 'streamspace', 'imported', NULL, 'db')`,
      );
    } finally {
      await c.end();
    }
    const res = await fetch(`${stack.url}/api/v1/migrations/run-csv/failures.csv`, { headers: { authorization: `Bearer ${admin}` } });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/text\/csv/);
    expect(res.headers.get('content-disposition')).toContain('migration-run-csv-failures.csv');
    const lines = (await res.text()).trim().split('\r\n');
    expect(lines).toEqual([
      'kind,id,namespace,status,reason,source,at',
      expect.stringMatching(/^session,alice-firefox,streamspace,failed,"template ""firefox"" unknown, ""quoted"", a,b",crd,\d{4}-/),
      expect.stringMatching(/^session,evil,streamspace,failed,"'=HYPERLINK\(""http:\/\/x""\)",db,/),
    ]);
    expect((await fetch(`${stack.url}/api/v1/migrations/run-csv/failures.csv`, { headers: { authorization: `Bearer ${alice}` } })).status).toBe(403);
    const runs = await stack.call('GET', '/api/v1/migrations', undefined, admin);
    expect(runs.status).toBe(200);
    expect(Array.isArray(runs.body)).toBe(true);
  });

  test('the console is what / serves: its own CSP nonce per response, immutable assets, no directory escape', async () => {
    const a = await fetch(stack.url + '/');
    const b = await fetch(stack.url + '/admin/agents');
    expect(a.status).toBe(200);
    expect(b.status).toBe(200);
    const csp = a.headers.get('content-security-policy')!;
    expect(csp).toMatch(/script-src 'self'/);
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval/);
    const nonceA = /'nonce-([^']+)'/.exec(csp)![1];
    const nonceB = /'nonce-([^']+)'/.exec(b.headers.get('content-security-policy')!)![1];
    expect(nonceA).not.toBe(nonceB);
    const html = await a.text();
    expect(html).toContain(`content="${nonceA}"`);
    const script = /src="(\/console\/assets\/[^"]+\.js)"/.exec(html)![1];
    const js = await fetch(stack.url + script);
    expect(js.status).toBe(200);
    expect(js.headers.get('cache-control')).toMatch(/immutable/);
    // Sent compressed (pre-compressed at build), as the browser asks.
    const br = await fetch(stack.url + script, { headers: { 'accept-encoding': 'br' } });
    expect(br.headers.get('content-encoding')).toBe('br');
    const gz = await fetch(stack.url + script, { headers: { 'accept-encoding': 'gzip' } });
    expect(gz.headers.get('content-encoding')).toBe('gzip');
    expect(Number(gz.headers.get('content-length') ?? (await gz.arrayBuffer()).byteLength)).toBeLessThan(250 * 1024);
    expect((await fetch(stack.url + '/console/assets/..%2f..%2fapi%2fmain.js')).status).toBe(404);
    expect((await fetch(stack.url + '/console/assets/nope.js')).status).toBe(404);
    const cfg = await stack.call('GET', '/api/v1/console/config');
    expect(cfg.body).toEqual({ version: '2.0.0', temporal_ui_url: 'http://127.0.0.1:58233' });
  });
});
