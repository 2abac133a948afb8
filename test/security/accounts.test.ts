/**
 * Issue 9, accounts (real gateway, worker, PostgreSQL, Temporal and a Docker agent): change one's
 * own password, admin reset, role change and disable effective on the next request, delete (the
 * user's running session is stopped first), v1 bcrypt hashes still accepted and never re-hashed,
 * login throttled per username and per client address (429 + retry-after), and an unknown user
 * costs what a known one does. The users-table check behind every request is batched (issue 14),
 * never cached.
 */
import bcrypt from 'bcryptjs';
import { Stack, waitFor } from '../harness/stack';

jest.setTimeout(240_000);

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

describe('accounts', () => {
  // TRUST_PROXY: the tests pick their client address with X-Forwarded-For.
  const stack = new Stack('sec-accounts', {
    LOGIN_MAX_FAILURES_PER_USER: '3',
    LOGIN_MAX_FAILURES_PER_ADDRESS: '6',
    LOGIN_THROTTLE_WINDOW: '60s',
    TRUST_PROXY: 'true',
  });
  let admin: string;
  let addr = 0;
  /** A fresh client address per call unless one is given. */
  const from = (a = `10.9.${Math.floor(++addr / 250)}.${addr % 250}`) => ({ 'x-forwarded-for': a });
  const login = (username: string, password: string, headers = from()) => stack.call('POST', '/api/v1/auth/login', { username, password }, undefined, headers);
  const createUser = async (username: string, password = `${username}-password`, role = 'user') => {
    const r = await stack.call('POST', '/api/v1/users', { username, password, role }, admin);
    expect(r.status).toBe(201);
    const l = await login(username, password);
    expect(l.status).toBe(200);
    return l.body.token as string;
  };

  beforeAll(async () => {
    await stack.start();
    admin = await stack.login();
  });
  afterAll(() => stack.stop());

  test('change own password: current one required, old tokens revoked, scrypt stored', async () => {
    const old = await createUser('alice');
    const bad = await stack.call('POST', '/api/v1/auth/password', { current_password: 'wrong-password', new_password: 'alice-new-password' }, old);
    expect(bad.status).toBe(403);
    const same = await stack.call('POST', '/api/v1/auth/password', { current_password: 'alice-password', new_password: 'alice-password' }, old);
    expect(same.status).toBe(400);
    const short = await stack.call('POST', '/api/v1/auth/password', { current_password: 'alice-password', new_password: 'short' }, old);
    expect(short.status).toBe(400);
    expect((await login('alice', 'alice-password')).status).toBe(200); // nothing changed so far

    const ok = await stack.call('POST', '/api/v1/auth/password', { current_password: 'alice-password', new_password: 'alice-new-password' }, old);
    expect(ok.status).toBe(200);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, old)).status).toBe(401); // revoked
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, ok.body.token)).body).toMatchObject({ username: 'alice' });
    expect((await login('alice', 'alice-password')).status).toBe(401);
    expect((await login('alice', 'alice-new-password')).status).toBe(200);
    const hash = (await stack.pool.query(`SELECT password_hash FROM users WHERE username = 'alice'`)).rows[0].password_hash;
    expect(hash).toMatch(/^scrypt\$/);
    expect((await stack.call('POST', '/api/v1/auth/password', { current_password: 'x', new_password: 'yyyyyyyyyy' })).status).toBe(401);
  });

  test("v1's bcrypt ($2a$) hashes are accepted and left as they are", async () => {
    const v1Hash = bcrypt.hashSync('v1-user-password', 10).replace(/^\$2b\$/, '$2a$');
    await stack.pool.query(`INSERT INTO users (username, email, role, password_hash) VALUES ('v1user', 'v1user@example.com', 'user', $1)`, [v1Hash]);
    expect((await login('v1user', 'wrong-password')).status).toBe(401);
    expect((await login('v1user', 'v1-user-password')).status).toBe(200);
    expect((await stack.pool.query(`SELECT password_hash FROM users WHERE username = 'v1user'`)).rows[0].password_hash).toBe(v1Hash);
  });

  test('admin reset: only admins, the user’s tokens are revoked, the new password works', async () => {
    const bob = await createUser('bob');
    expect((await stack.call('POST', '/api/v1/users/bob/password', { password: 'bob-reset-password' }, bob)).status).toBe(403);
    expect((await stack.call('POST', '/api/v1/users/nobody/password', { password: 'whatever-password' }, admin)).status).toBe(404);
    expect((await stack.call('POST', '/api/v1/users/bob/password', { password: 'short' }, admin)).status).toBe(400);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, bob)).status).toBe(200);

    expect((await stack.call('POST', '/api/v1/users/bob/password', { password: 'bob-reset-password' }, admin)).status).toBe(204);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, bob)).status).toBe(401);
    expect((await login('bob', 'bob-password')).status).toBe(401);
    const fresh = await login('bob', 'bob-reset-password');
    expect(fresh.status).toBe(200);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, fresh.body.token)).status).toBe(200);
  });

  test('role change and disable apply on the next request, with the same token', async () => {
    const carol = await createUser('carol');
    expect((await stack.call('GET', '/api/v1/users', undefined, carol)).status).toBe(403);
    const promoted = await stack.call('PATCH', '/api/v1/users/carol', { role: 'admin' }, admin);
    expect(promoted.status).toBe(200);
    expect(promoted.body).toMatchObject({ username: 'carol', role: 'admin', active: true });
    expect((await stack.call('GET', '/api/v1/users', undefined, carol)).status).toBe(200);
    expect((await stack.call('PATCH', '/api/v1/users/carol', { role: 'user' }, admin)).status).toBe(200);
    expect((await stack.call('GET', '/api/v1/users', undefined, carol)).status).toBe(403);

    expect((await stack.call('PATCH', '/api/v1/users/carol', { active: false }, admin)).status).toBe(200);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, carol)).status).toBe(401);
    expect((await login('carol', 'carol-password')).status).toBe(403);
    expect((await stack.call('PATCH', '/api/v1/users/carol', { active: true }, admin)).status).toBe(200);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, carol)).status).toBe(401); // disabling revoked it for good
    const carolAgain = await login('carol', 'carol-password');
    expect(carolAgain.status).toBe(200);

    // Refused cases change nothing.
    expect((await stack.call('PATCH', '/api/v1/users/carol', {}, admin)).status).toBe(400);
    expect((await stack.call('PATCH', '/api/v1/users/carol', { role: 'root' }, admin)).status).toBe(400);
    expect((await stack.call('PATCH', '/api/v1/users/carol', { role: 'admin' }, carolAgain.body.token)).status).toBe(403);
    const lastAdmin = await stack.call('PATCH', '/api/v1/users/admin', { role: 'user' }, admin);
    expect(lastAdmin.status).toBe(409);
    expect(lastAdmin.body.message).toMatch(/last active admin/);
    expect((await stack.call('PATCH', '/api/v1/users/admin', { active: false }, admin)).status).toBe(409);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, admin)).body).toMatchObject({ role: 'admin' });
  });

  test('concurrent requests share one users-table check, held up a second at most by a hung one; each gets its own answer', async () => {
    const names = Array.from({ length: 12 }, (_, i) => `batch${i}`);
    const tokens: string[] = [];
    for (const n of names) tokens.push(await createUser(n));
    // The table locked: the gateway's first check waits in PostgreSQL, and the requests that come
    // meanwhile must wait for the next query together, not send one each.
    const lock = await stack.pool.connect();
    const waiting = async () =>
      (
        await stack.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity
            WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FROM users WHERE username%'`,
        )
      ).rows[0].n;
    let answers: Array<Promise<{ status: number; body: any }>> = [];
    try {
      await lock.query('BEGIN');
      await lock.query('LOCK TABLE users IN ACCESS EXCLUSIVE MODE');
      answers = tokens.map((t) => stack.call('GET', '/api/v1/auth/me', undefined, t));
      await waitFor('a users-table check waiting on the lock', async () => (await waiting()) > 0, 10_000);
      await new Promise((r) => setTimeout(r, 300)); // every request has reached the gateway
      expect(await waiting()).toBe(1);
      // A check that hangs holds the others up for a second at most: then they go in a query of their own.
      await waitFor('the waiting requests sent after a second', async () => (await waiting()) === 2, 10_000);
      // Committed before the waiting requests' next query is sent: that query sees it.
      await lock.query(`UPDATE users SET active = false WHERE username = 'batch3'`);
      await lock.query('COMMIT');
    } catch (err) {
      await lock.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      lock.release();
    }
    const results = await Promise.all(answers);
    results.forEach((r, i) => {
      if (names[i] === 'batch3') expect(r.status).toBe(401);
      else expect([r.status, r.body.username]).toEqual([200, names[i]]);
    });
  });

  test('delete: the user’s running session is stopped through its workflow, then the user is gone', async () => {
    await stack.startDockerAgent('docker-sec-accounts-1', { VNC_PORT_RANGE: '15990-15999' });
    const dave = await createUser('dave');
    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', state: 'running' }, dave);
    expect(created.status).toBe(201);
    const sessionId = created.body.id;
    await stack.waitForState(dave, sessionId, 'running');
    expect(await stack.containers(sessionId)).toHaveLength(1);

    expect((await stack.call('DELETE', '/api/v1/users/dave', undefined, dave)).status).toBe(403);
    expect((await stack.call('DELETE', '/api/v1/users/nobody', undefined, admin)).status).toBe(404);
    expect((await stack.call('DELETE', '/api/v1/users/admin', undefined, admin)).status).toBe(409);

    const del = await stack.call('DELETE', '/api/v1/users/dave', undefined, admin);
    expect(del.status).toBe(200);
    expect(del.body).toMatchObject({ username: 'dave', removed: true, sessions_stopped: 1 });
    // Stopped through the workflow: the container is gone and the session recorded terminated.
    await waitFor('the container to be removed', async () => (await stack.containers(sessionId)).length === 0, 30_000);
    const row = (await stack.pool.query('SELECT state FROM sessions WHERE id = $1', [sessionId])).rows[0];
    expect(row?.state ?? 'terminated').toBe('terminated');
    const cmds = await stack.pool.query(`SELECT command_type, status FROM agent_commands WHERE session_id = $1 AND command_type = 'stop_session'`, [sessionId]);
    expect(cmds.rows).toEqual([expect.objectContaining({ status: 'completed' })]);
    expect((await stack.call('GET', '/api/v1/auth/me', undefined, dave)).status).toBe(401);
    expect((await login('dave', 'dave-password')).status).toBe(401);
    const users = await stack.call('GET', '/api/v1/users', undefined, admin);
    expect(users.body.map((u: { username: string }) => u.username)).not.toContain('dave');
  });

  test('login is throttled per username and per client address: 429 with retry-after', async () => {
    await createUser('erin');
    await createUser('frank');
    // Per username (3 failures), whatever the address: then even the right password waits.
    for (let i = 0; i < 3; i++) expect((await login('erin', 'wrong-password')).status).toBe(401);
    const limited = await login('erin', 'erin-password');
    expect(limited.status).toBe(429);
    expect(limited.body.message).toMatch(/too many failed sign-in attempts for this username/);
    const retry = Number(
      (await fetch(`${stack.url}/api/v1/auth/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...from() },
        body: JSON.stringify({ username: 'erin', password: 'erin-password' }),
      }).then((r) => r.headers.get('retry-after'))) ?? NaN,
    );
    expect(retry).toBeGreaterThan(0);
    expect(retry).toBeLessThanOrEqual(60);
    expect((await login('frank', 'frank-password')).status).toBe(200); // other users are not affected

    // Per address (6 failures), whatever the usernames.
    const attacker = from('127.0.66.1');
    for (let i = 0; i < 6; i++) expect((await login(`guess-${i}`, 'wrong-password', attacker)).status).toBe(401);
    const blocked = await login('frank', 'frank-password', attacker);
    expect(blocked.status).toBe(429);
    expect(blocked.body.message).toMatch(/from this address/);
    expect((await login('frank', 'frank-password', from('127.0.66.2'))).status).toBe(200);
  });

  test('an unknown user takes as long as a known one (dummy hash)', async () => {
    const known: string[] = [];
    for (let i = 0; i < 9; i++) {
      await stack.call('POST', '/api/v1/users', { username: `timing-${i}`, password: 'timing-password' }, admin);
      known.push(`timing-${i}`);
    }
    const time = async (username: string) => {
      const t = process.hrtime.bigint();
      const r = await login(username, 'not-the-password');
      expect(r.status).toBe(401);
      return Number(process.hrtime.bigint() - t) / 1e6;
    };
    await time('warm-up-unknown');
    const knownMs: number[] = [];
    const unknownMs: number[] = [];
    for (let i = 0; i < 18; i++) {
      knownMs.push(await time(known[i % known.length]));
      unknownMs.push(await time(`no-such-user-${i}`));
    }
    const ratio = median(knownMs) / median(unknownMs);
    console.log(`login timing: known ${median(knownMs).toFixed(1)} ms, unknown ${median(unknownMs).toFixed(1)} ms, ratio ${ratio.toFixed(2)}`);
    expect(ratio).toBeLessThan(3);
    expect(ratio).toBeGreaterThan(1 / 3);
  });
});
