/**
 * Issue 8, items 2 and 3, on a database StreamSpace v1.0.0's own code would have created (see
 * test/harness/v1-install.ts): v2 starts on it, every v1 user signs in with their v1 password
 * (bcrypt `$2a$`), keeps their role and sees exactly their own sessions; v1's catalog_templates
 * are v2's templates; an imported session is a managed v2 session that wakes with the home
 * volume v1 gave it (a file written there before the migration is read back in the real
 * container), and hibernates and stops on v2. v1's tables are unchanged by all of it except the
 * rows v2 was asked to take over.
 */
import { Client } from 'pg';
import { sessionWorkflowId } from '../workflows/session-api';
import { TEST_ENV } from './harness/env';
import { Stack, waitFor } from './harness/stack';
import { createV1_0_0Database, v1CatalogManifest, V1InstallFixture } from './harness/v1-install';

jest.setTimeout(300_000);

/** Writes a file into a Docker named volume the way it would be before the migration (a throwaway container). */
async function writeIntoVolume(stack: Stack, volume: string, file: string, content: string): Promise<void> {
  await stack.docker.createVolume({ Name: volume }).catch(() => undefined);
  const c = await stack.docker.createContainer({
    Image: TEST_ENV.sessionImage,
    Entrypoint: ['sh', '-c', `printf '%s' "$CONTENT" > /home-volume/${file} && chmod 666 /home-volume/${file}`],
    Env: [`CONTENT=${content}`],
    HostConfig: { Binds: [`${volume}:/home-volume`], NetworkMode: 'none' },
  });
  await c.start();
  await c.wait();
  await c.remove();
}

describe('a StreamSpace v1.0.0 install, as v1 created it, on v2', () => {
  const stack = new Stack('v1-users');
  let v1: V1InstallFixture;
  const volumes: string[] = [];

  beforeAll(async () => {
    v1 = await createV1_0_0Database(TEST_ENV.pgAdminUrl, { name: stack.dbName, users: 6, sessionsPerUser: 5, seed: 7 });
    await stack.start({ existingDatabase: true });
    await stack.startDockerAgent('docker-v1-import', { VNC_PORT_RANGE: '15960-15979' });
  });
  afterAll(async () => {
    await stack.stop();
    for (const v of volumes)
      await stack.docker
        .getVolume(v)
        .remove({ force: true })
        .catch(() => undefined);
  });

  test('every v1 user signs in with the v1 password, keeps the role and sees exactly their own sessions', async () => {
    const active = v1.users.filter((u) => u.active);
    expect(active.length).toBeGreaterThanOrEqual(3);
    const visible = (s: { state: string }) => s.state !== 'deleted';
    for (const u of active) {
      const login = await stack.call('POST', '/api/v1/auth/login', { username: u.username, password: u.password });
      expect(login.status).toBe(200);
      expect(login.body.user).toEqual({ id: u.id, username: u.username, role: u.role });
      const wrong = await stack.call('POST', '/api/v1/auth/login', { username: u.username, password: u.password + 'x' });
      expect(wrong.status).toBe(401);

      const list = await stack.call('GET', '/api/v1/sessions', undefined, login.body.token);
      expect(list.status).toBe(200);
      const mine = v1.sessions.filter((s) => s.userId === u.id && visible(s));
      if (u.role === 'admin') {
        expect(list.body.map((s: any) => s.id).sort()).toEqual(
          v1.sessions
            .filter(visible)
            .map((s) => s.id)
            .sort(),
        );
      } else {
        expect(list.body.map((s: any) => s.id).sort()).toEqual(mine.map((s) => s.id).sort());
        for (const s of list.body) expect(s.user).toBe(u.username);
      }
      // One of them by id, and another user's by id: 404, exactly like a missing one.
      if (mine[0]) expect((await stack.call('GET', `/api/v1/sessions/${mine[0].id}`, undefined, login.body.token)).status).toBe(200);
      const other = v1.sessions.find((s) => s.userId !== u.id && visible(s))!;
      if (u.role !== 'admin') {
        expect((await stack.call('GET', `/api/v1/sessions/${other.id}`, undefined, login.body.token)).status).toBe(404);
        expect((await stack.call('POST', `/api/v1/sessions/${other.id}/vnc-ticket`, undefined, login.body.token)).status).toBe(404);
      }
    }
    // v1's inactive users stay out.
    for (const u of v1.users.filter((x) => !x.active)) {
      const login = await stack.call('POST', '/api/v1/auth/login', { username: u.username, password: u.password });
      expect(login.status).toBe(403);
    }
  });

  test("a role changed in the users table applies on the next request, not at the token's expiry", async () => {
    const u = v1.users.find((x) => x.active && x.role === 'user')!;
    const token = (await stack.call('POST', '/api/v1/auth/login', { username: u.username, password: u.password })).body.token;
    expect((await stack.call('GET', '/api/v1/agents', undefined, token)).status).toBe(403);
    await stack.pool.query(`UPDATE users SET role = 'admin' WHERE id = $1`, [u.id]);
    expect((await stack.call('GET', '/api/v1/agents', undefined, token)).status).toBe(200);
    await stack.pool.query(`UPDATE users SET role = 'user', active = false WHERE id = $1`, [u.id]);
    expect((await stack.call('GET', '/api/v1/sessions', undefined, token)).status).toBe(401);
    await stack.pool.query(`UPDATE users SET active = true WHERE id = $1`, [u.id]);
  });

  test("v1's catalog_templates are v2's templates", async () => {
    const admin = v1.users.find((u) => u.role === 'admin' && u.active)!;
    const token = (await stack.call('POST', '/api/v1/auth/login', { username: admin.username, password: admin.password })).body.token;
    const r = await stack.call('GET', '/api/v1/templates', undefined, token);
    expect(r.status).toBe(200);
    const names = r.body.map((t: any) => t.name);
    for (const t of v1.templates) expect(names).toContain(t);
    const ff = r.body.find((t: any) => t.name === v1.templates[0]);
    expect(ff).toEqual(expect.objectContaining({ source: 'v1-catalog', display_name: expect.any(String), image: expect.any(String) }));
  });

  test('an imported v1 session is a managed v2 session: wake runs it with the v1 home volume, the file is there; hibernate and stop work', async () => {
    const admin = v1.users.find((u) => u.role === 'admin' && u.active)!;
    const adminToken = (await stack.call('POST', '/api/v1/auth/login', { username: admin.username, password: admin.password })).body.token;
    const owner = v1.users.find((u) => u.active && u.role === 'user')!;
    // A template in v1's catalog whose image exists here, and a v1 session of it, both written as v1 writes them.
    const db = new Client({ connectionString: v1.url });
    await db.connect();
    const sessionId = `${owner.username}-local-desktop-${stack.id}`; // workflow ids are namespace-wide: unique per run
    try {
      await db.query(
        `INSERT INTO catalog_templates (repository_id, name, display_name, description, category, app_type, icon_url, manifest, tags)
         SELECT id, 'local-desktop', 'Local Desktop', 'Desktop built here', 'Development', 'desktop', '', $1, ARRAY['desktop']
           FROM repositories WHERE name = 'Official Templates'`,
        [
          v1CatalogManifest({
            name: 'local-desktop',
            displayName: 'Local Desktop',
            description: 'Desktop built here',
            category: 'Development',
            icon: '',
            baseImage: TEST_ENV.sessionImage,
            defaultResources: { memory: '1Gi', cpu: '500m' },
            ports: [{ name: 'vnc', containerPort: 5900, protocol: 'TCP' }],
            env: [],
            vnc: { enabled: true, port: 5900, protocol: 'rfb', encryption: false },
            capabilities: [],
            tags: ['desktop'],
          }),
        ],
      );
    } finally {
      await db.end();
    }
    // v1's API puts the username the UI sends into Spec.User, and its controller names the home
    // after it: home-<username>. (Its sessions-table insert for that session fails v1's own
    // foreign key to users.id, so a non-admin's v1 session is a CRD only.)
    const volume = `home-${owner.username}`;
    volumes.push(volume);
    await writeIntoVolume(stack, volume, 'written-on-v1.txt', 'hello from v1');

    const crd = {
      apiVersion: 'stream.space/v1alpha1',
      kind: 'Session',
      metadata: { name: sessionId, namespace: 'streamspace' },
      spec: { user: owner.username, template: 'local-desktop', state: 'running', persistentHome: true },
    };
    const imported = await stack.call('POST', '/api/v1/sessions/bulk-import?platform=docker', { items: [crd] }, adminToken);
    expect(imported.status).toBe(200);
    expect(imported.body).toEqual(expect.objectContaining({ total: 1, imported: 1, failed: 0 }));
    const again = await stack.call('POST', '/api/v1/sessions/bulk-import?platform=docker', { items: [crd] }, adminToken);
    expect(again.body).toEqual(expect.objectContaining({ total: 1, imported: 0, unchanged: 1 }));

    const token = (await stack.call('POST', '/api/v1/auth/login', { username: owner.username, password: owner.password })).body.token;
    const got = await stack.call('GET', `/api/v1/sessions/${sessionId}`, undefined, token);
    expect(got.body).toEqual(expect.objectContaining({ id: sessionId, user: owner.username, state: 'hibernated', platform: 'docker' }));
    const desc = await stack.temporal.workflow.getHandle(sessionWorkflowId(sessionId)).describe();
    expect(desc.status.name).toBe('RUNNING');

    const woke = await stack.call('POST', `/api/v1/sessions/${sessionId}/wake`, undefined, token);
    expect(woke.status).toBe(200);
    expect(woke.body.state).toBe('running');
    const [c] = await stack.containers(sessionId);
    expect(c).toBeDefined();
    const info = await stack.docker.getContainer(c.Id).inspect();
    expect(info.Mounts.find((m) => m.Destination === '/config')?.Name).toBe(volume);
    expect(await stack.exec(c.Id, 'cat /config/written-on-v1.txt')).toBe('hello from v1');

    const hib = await stack.call('POST', `/api/v1/sessions/${sessionId}/hibernate`, undefined, token);
    expect(hib.body.state).toBe('hibernated');
    expect((await stack.docker.getContainer(c.Id).inspect()).State.Running).toBe(false);
    const woke2 = await stack.call('POST', `/api/v1/sessions/${sessionId}/wake`, undefined, token);
    expect(woke2.body.state).toBe('running');
    expect(await stack.exec(c.Id, 'cat /config/written-on-v1.txt')).toBe('hello from v1');
    const stop = await stack.call('DELETE', `/api/v1/sessions/${sessionId}`, undefined, token);
    expect(stop.body.state).toBe('terminated');
    await waitFor('container removed', async () => (await stack.containers(sessionId)).length === 0);
    // The v1 volume outlives the session, as v1's PVC did.
    expect((await stack.docker.getVolume(volume).inspect()).Name).toBe(volume);
    // What v1 had in the row is kept for a rollback.
    const row = await stack.pool.query(`SELECT user_id, platform_metadata FROM sessions WHERE id = $1`, [sessionId]);
    expect(row.rows[0].user_id).toBe(owner.id);
    expect(row.rows[0].platform_metadata).toEqual(expect.objectContaining({ v1_state: 'running', v1_inserted: true, home_volume: volume }));

    // An owner who is not a user is a failure with the reason; no user is created by an import.
    const stray = { ...crd, metadata: { ...crd.metadata, name: `nobody-local-desktop-${stack.id}` }, spec: { ...crd.spec, user: 'nobody' } };
    const refused = await stack.call('POST', '/api/v1/sessions/bulk-import?platform=docker', [stray], adminToken);
    expect(refused.body.results).toEqual([expect.objectContaining({ status: 'failed', reason: expect.stringContaining('"nobody" is not a user') })]);
    expect((await stack.pool.query(`SELECT 1 FROM users WHERE username = 'nobody'`)).rowCount).toBe(0);
  });
});
