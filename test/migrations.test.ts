/**
 * Migrations against a real PostgreSQL (TEST_PG_ADMIN_URL, a superuser connection; default the
 * provisioned cluster on 127.0.0.1:55432). Every test works in its own throw-away database.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Client } from 'pg';
import { listMigrations, migrate, migrationsDir } from '../db/migrate';

jest.setTimeout(120_000);

const ADMIN_URL = process.env.TEST_PG_ADMIN_URL || 'postgres://streamspace:streamspace@127.0.0.1:55432/postgres';
const ALL_VERSIONS = listMigrations().map((m) => m.version);

const created: string[] = [];

async function withClient<T>(url: string, fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

async function waitForPostgres(timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    try {
      await withClient(ADMIN_URL, (c) => c.query('SELECT 1'));
      return;
    } catch (err) {
      last = err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  throw new Error(`PostgreSQL not reachable at ${ADMIN_URL}: ${String(last)}`);
}

/** Creates an empty database and returns its URL. */
async function createDatabase(): Promise<string> {
  const name = `ss_test_${crypto.randomBytes(6).toString('hex')}`;
  await withClient(ADMIN_URL, (c) => c.query(`CREATE DATABASE ${name}`));
  created.push(name);
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

async function columns(c: Client, table: string): Promise<string[]> {
  const { rows } = await c.query<{ column_name: string }>(
    `SELECT column_name FROM information_schema.columns
      WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position`,
    [table],
  );
  return rows.map((r) => r.column_name);
}

async function tableExists(c: Client, table: string): Promise<boolean> {
  const { rows } = await c.query<{ t: string | null }>('SELECT to_regclass($1)::text AS t', [table]);
  return rows[0].t !== null;
}

async function recordedVersions(c: Client): Promise<string[]> {
  const { rows } = await c.query<{ version: string }>('SELECT version FROM schema_migrations ORDER BY version');
  return rows.map((r) => r.version);
}

beforeAll(async () => {
  await waitForPostgres();
});

afterEach(async () => {
  const names = created.splice(0);
  await withClient(ADMIN_URL, async (c) => {
    for (const name of names) await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  });
});

describe('migration files', () => {
  test('are listed in filename order with their header versions', () => {
    const list = listMigrations();
    expect(list.map((m) => m.file)).toEqual([
      '000_v1_baseline.sql',
      '001_v2.0-agents.sql',
      '002_v2.0-beta1-additions.sql',
      '003_v2.0.1-runtime.sql',
      '004_v2.0.2-vnc-tickets.sql',
      '005_v2.0.3-v1-users-catalog.sql',
      '006_v2.0.4-agent-tokens.sql',
      '007_v2.0.5-accounts.sql',
      '008_v2.0.6-command-deadlines.sql',
      '009_v2.0.7-console-live.sql',
      '010_v2.0.8-audit-quotas.sql',
      '011_v2.0.9-session-lifetime.sql',
      '012_v2.0.10-session-list-index.sql',
      '013_v2.0.11-users-id-text-index.sql',
      '014_v2.0.12-agent-usage.sql',
    ]);
    expect(list.map((m) => m.version)).toEqual([
      'v1.0.0-baseline',
      'v2.0.0-agents',
      'v2.0.0-beta1-ha',
      'v2.0.1-runtime',
      'v2.0.2-vnc-tickets',
      'v2.0.3-v1-users-catalog',
      'v2.0.4-agent-tokens',
      'v2.0.5-accounts',
      'v2.0.6-command-deadlines',
      'v2.0.7-console-live',
      'v2.0.8-audit-quotas',
      'v2.0.9-session-lifetime',
      'v2.0.10-session-list-index',
      'v2.0.11-users-id-text-index',
      'v2.0.12-agent-usage',
    ]);
    expect(path.basename(migrationsDir())).toBe('migrations');
  });
});

describe('migrate()', () => {
  test('(1) fresh database: applies every file and creates the v2 schema', async () => {
    const url = await createDatabase();
    const logs: string[] = [];
    const result = await migrate(url, { log: (m) => logs.push(m) });
    expect(result).toEqual({ applied: ALL_VERSIONS, skipped: [] });
    expect(logs.some((l) => l.includes('001_v2.0-agents.sql'))).toBe(true);

    await withClient(url, async (c) => {
      for (const t of [
        'users',
        'templates',
        'sessions',
        'agents',
        'agent_commands',
        'platform_controllers',
        'redis_agent_connections',
        'leader_election_leases',
      ]) {
        expect(await tableExists(c, t)).toBe(true);
      }
      const sessionCols = await columns(c, 'sessions');
      for (const col of ['agent_id', 'platform', 'platform_metadata', 'cluster_id', 'tags', 'state', 'error_message', 'workflow_id']) {
        expect(sessionCols).toContain(col);
      }
      const cmdCols = await columns(c, 'agent_commands');
      for (const col of ['session_id', 'idempotency_key', 'progress', 'updated_at', 'retry_count']) expect(cmdCols).toContain(col);
      expect(await columns(c, 'agents')).toEqual(expect.arrayContaining(['cluster_id', 'active_sessions']));

      const versions = await recordedVersions(c);
      expect(versions).toEqual(expect.arrayContaining(['v2.0.0-agents', 'v2.0.0-beta1-ha']));
      expect(versions).toHaveLength(ALL_VERSIONS.length);

      // New sessions start pending; commands reference sessions by their text id.
      await c.query(`INSERT INTO sessions (id, user_id, template_name) VALUES ('s1', 'alice', 'firefox-browser')`);
      const s = await c.query('SELECT state, tags FROM sessions WHERE id = $1', ['s1']);
      expect(s.rows[0]).toEqual({ state: 'pending', tags: [] });
      const a = await c.query(`INSERT INTO agents (agent_id, platform) VALUES ('docker-1', 'docker') RETURNING id`);
      await c.query(`INSERT INTO agent_commands (agent_id, session_id, command_type, idempotency_key) VALUES ($1, 's1', 'start_session', 'k1')`, [
        a.rows[0].id,
      ]);
      await expect(
        c.query(`INSERT INTO agent_commands (agent_id, session_id, command_type, idempotency_key) VALUES ($1, 's1', 'start_session', 'k1')`, [a.rows[0].id]),
      ).rejects.toThrow(/idx_agent_commands_idempotency_key/);
      const before = await c.query(`SELECT updated_at FROM agents WHERE agent_id = 'docker-1'`);
      await new Promise((r) => setTimeout(r, 20));
      await c.query(`UPDATE agents SET status = 'online' WHERE agent_id = 'docker-1'`);
      const after = await c.query(`SELECT updated_at FROM agents WHERE agent_id = 'docker-1'`);
      expect(after.rows[0].updated_at.getTime()).toBeGreaterThan(before.rows[0].updated_at.getTime());
      // Deleting a session cascades to its commands.
      await c.query(`DELETE FROM sessions WHERE id = 's1'`);
      expect((await c.query('SELECT count(*)::int AS n FROM agent_commands')).rows[0].n).toBe(0);
    });
  });

  test('(2) second run applies nothing and does not fail', async () => {
    const url = await createDatabase();
    await migrate(url);
    const again = await migrate(url);
    expect(again).toEqual({ applied: [], skipped: ALL_VERSIONS });
    await withClient(url, async (c) => expect(await recordedVersions(c)).toHaveLength(ALL_VERSIONS.length));
  });

  test('(3) each SQL file run twice directly (outside the runner) succeeds', async () => {
    const url = await createDatabase();
    await withClient(url, async (c) => {
      for (const m of listMigrations()) {
        const sql = fs.readFileSync(m.path, 'utf8');
        await c.query(sql);
        await c.query(sql); // e.g. the spec's bare CREATE TRIGGER failed here
      }
      // ...and the whole sequence once more, now that everything exists.
      for (const m of listMigrations()) await c.query(fs.readFileSync(m.path, 'utf8'));

      const triggers = await c.query(`SELECT tgname FROM pg_trigger WHERE tgrelid = 'agents'::regclass AND NOT tgisinternal`);
      expect(triggers.rows.map((r) => r.tgname).sort()).toEqual(['trigger_agents_changed', 'trigger_agents_updated_at']);
      const fks = await c.query<{ conname: string }>(
        `SELECT conname FROM pg_constraint WHERE contype = 'f' AND conrelid IN ('sessions'::regclass, 'agent_commands'::regclass) ORDER BY 1`,
      );
      expect(fks.rows.map((r) => r.conname)).toEqual(['agent_commands_agent_id_fkey', 'agent_commands_session_id_fkey', 'sessions_agent_id_fkey']);
      expect(await recordedVersions(c)).toEqual([...ALL_VERSIONS].sort());
    });
    // The runner accepts a database prepared by hand with psql -f.
    expect(await migrate(url)).toEqual({ applied: [], skipped: ALL_VERSIONS });
  });

  test('(4) a v1 database full of data (status column) keeps its rows and gains the v2 schema', async () => {
    const url = await createDatabase();
    const STATES = ['running', 'hibernated', 'terminated'];
    await withClient(url, async (c) => {
      // v1 as some installs had it: TEXT ids, `status` rather than `state`, no schema_migrations.
      await c.query(`
        CREATE TABLE users (
          id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
          username VARCHAR(255) UNIQUE NOT NULL,
          email VARCHAR(255),
          role VARCHAR(50) NOT NULL DEFAULT 'user',
          password_hash TEXT,
          created_at TIMESTAMP DEFAULT NOW(),
          updated_at TIMESTAMP DEFAULT NOW());
        CREATE TABLE templates (
          id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
          name VARCHAR(255) UNIQUE NOT NULL,
          display_name VARCHAR(255) NOT NULL,
          description TEXT,
          category VARCHAR(100),
          icon TEXT,
          manifest JSONB NOT NULL DEFAULT '{}',
          created_at TIMESTAMP DEFAULT NOW(),
          updated_at TIMESTAMP DEFAULT NOW());
        CREATE TABLE sessions (
          id TEXT PRIMARY KEY,
          user_id TEXT NOT NULL,
          template_name TEXT NOT NULL,
          status VARCHAR(50) DEFAULT 'running',
          url TEXT,
          namespace VARCHAR(255) DEFAULT 'streamspace',
          pod_name VARCHAR(255),
          memory VARCHAR(50),
          cpu VARCHAR(50),
          persistent_home BOOLEAN DEFAULT TRUE,
          idle_timeout VARCHAR(50) DEFAULT '30m',
          max_session_duration VARCHAR(50) DEFAULT '8h',
          last_activity TIMESTAMP,
          created_at TIMESTAMP DEFAULT NOW(),
          updated_at TIMESTAMP DEFAULT NOW());
        -- A same-named table in another schema must not confuse the status -> state rename
        -- (the spec's unfiltered information_schema check saw its "state" and skipped the rename).
        CREATE SCHEMA archive;
        CREATE TABLE archive.sessions (id TEXT PRIMARY KEY, state TEXT);
      `);
      for (let i = 0; i < 50; i++) {
        await c.query(`INSERT INTO users (username, email, role, password_hash) VALUES ($1, $2, $3, $4)`, [
          `user${i}`,
          `user${i}@example.com`,
          i === 0 ? 'admin' : 'user',
          `$2a$10$hash${i}`,
        ]);
        await c.query(`INSERT INTO templates (name, display_name, category, manifest) VALUES ($1, $2, 'Browsers', $3)`, [
          `tmpl-${i}`,
          `Template ${i}`,
          JSON.stringify({
            baseImage: `lscr.io/linuxserver/app${i}:latest`,
            defaultResources: { memory: '2Gi', cpu: '1000m' },
            ports: [{ name: 'vnc', containerPort: 3000 }],
          }),
        ]);
        await c.query(
          `INSERT INTO sessions (id, user_id, template_name, status, url, pod_name, memory, cpu, last_activity)
           VALUES ($1, $2, $3, $4, $5, $6, '2Gi', '1000m', NOW())`,
          [`user${i}-tmpl-${i}`, `user${i}`, `tmpl-${i}`, STATES[i % 3], `https://ss.example.com/s/${i}`, `ss-user${i}-tmpl-${i}-0`],
        );
      }
    });

    const result = await migrate(url);
    expect(result.applied).toEqual(ALL_VERSIONS);

    await withClient(url, async (c) => {
      const counts = await c.query(
        `SELECT (SELECT count(*) FROM users)::int AS users, (SELECT count(*) FROM templates)::int AS templates,
                (SELECT count(*) FROM sessions)::int AS sessions`,
      );
      expect(counts.rows[0]).toEqual({ users: 50, templates: 50, sessions: 50 });
      // `state` is added beside v1's `status` (a v1 still serving keeps reading `status`), and equal to it.
      const cols = await columns(c, 'sessions');
      expect(cols).toContain('state');
      expect(cols).toContain('status');
      const { rows } = await c.query('SELECT id, state, status, platform, platform_metadata, url, memory FROM sessions');
      expect(rows).toHaveLength(50);
      rows.forEach((r) => {
        const i = Number(/^user(\d+)-/.exec(r.id)![1]);
        expect(r.state).toBe(STATES[i % 3]);
        expect(r.status).toBe(STATES[i % 3]);
        // No v1 row is rewritten (the guide's backfill of platform/platform_metadata is not done).
        expect(r.platform).toBeNull();
        expect(r.platform_metadata).toBeNull();
        expect(r.url).toBe(`https://ss.example.com/s/${i}`);
        expect(r.memory).toBe('2Gi');
      });
      const t = await c.query(`SELECT manifest FROM templates WHERE name = 'tmpl-7'`);
      expect(t.rows[0].manifest.baseImage).toBe('lscr.io/linuxserver/app7:latest');
      const u = await c.query(`SELECT role FROM users WHERE username = 'user0'`);
      expect(u.rows[0].role).toBe('admin');
      expect(await columns(c, 'sessions')).toEqual(expect.arrayContaining(['agent_id', 'cluster_id', 'tags']));
      // The archive copy was left alone.
      expect(
        await c
          .query(`SELECT column_name FROM information_schema.columns WHERE table_schema = 'archive' AND table_name = 'sessions' ORDER BY 1`)
          .then((r) => r.rows.map((x) => x.column_name)),
      ).toEqual(['id', 'state']);
      // v1 sessions can be targeted by v2 commands (TEXT id foreign key).
      await c.query(`INSERT INTO agent_commands (session_id, command_type) VALUES ('user3-tmpl-3', 'wake_session')`);
      // Both versions write: v1's `status` reaches `state`, v2's `state` reaches `status`.
      await c.query(`UPDATE sessions SET status = 'hibernated' WHERE id = 'user1-tmpl-1'`);
      await c.query(`UPDATE sessions SET state = 'terminated' WHERE id = 'user2-tmpl-2'`);
      await c.query(`INSERT INTO sessions (id, user_id, template_name, status) VALUES ('v1-new', 'user4', 'tmpl-4', 'running')`);
      await c.query(`INSERT INTO sessions (id, user_id, template_name, state) VALUES ('v2-new', 'user4', 'tmpl-4', 'pending')`);
      const synced = await c.query(`SELECT id, state, status FROM sessions WHERE id IN ('user1-tmpl-1', 'user2-tmpl-2', 'v1-new', 'v2-new') ORDER BY id`);
      expect(synced.rows).toEqual([
        { id: 'user1-tmpl-1', state: 'hibernated', status: 'hibernated' },
        { id: 'user2-tmpl-2', state: 'terminated', status: 'terminated' },
        { id: 'v1-new', state: 'running', status: 'running' },
        { id: 'v2-new', state: 'pending', status: 'pending' },
      ]);
    });
  });

  test('(5) concurrent runners both succeed and each version is recorded once', async () => {
    const url = await createDatabase();
    const results = await Promise.all([migrate(url), migrate(url), migrate(url)]);
    const applied = results.flatMap((r) => r.applied).sort();
    expect(applied).toEqual([...ALL_VERSIONS].sort());
    for (const r of results) expect([...r.applied, ...r.skipped].sort()).toEqual([...ALL_VERSIONS].sort());
    await withClient(url, async (c) => {
      const { rows } = await c.query('SELECT version, count(*)::int AS n FROM schema_migrations GROUP BY version ORDER BY version');
      expect(rows).toEqual([...ALL_VERSIONS].sort().map((version) => ({ version, n: 1 })));
    });
  });

  test('(6) a failing migration file is rolled back, not recorded, and named in the error', async () => {
    const url = await createDatabase();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ss-migrations-'));
    const saved = process.env.MIGRATIONS_DIR;
    try {
      for (const m of listMigrations().slice(0, 2)) fs.copyFileSync(m.path, path.join(dir, m.file));
      fs.writeFileSync(
        path.join(dir, '002_broken.sql'),
        [
          '-- version: v9.9.9-broken',
          'CREATE TABLE half_done (id INT);',
          'INSERT INTO half_done VALUES (1);',
          'ALTER TABLE sessions ADD COLUMN broken_col TEXT;',
          'SELECT * FROM table_that_does_not_exist;',
          '',
        ].join('\n'),
      );
      process.env.MIGRATIONS_DIR = dir;

      const err = await migrate(url).then(
        () => undefined,
        (e: unknown) => e as Error,
      );
      expect(err).toBeInstanceOf(Error);
      expect(err!.message).toContain('002_broken.sql');
      expect(err!.message).toContain('table_that_does_not_exist');
      expect(err!.message).toMatch(/line 5/);

      await withClient(url, async (c) => {
        expect(await recordedVersions(c)).toEqual(['v1.0.0-baseline', 'v2.0.0-agents']);
        expect(await tableExists(c, 'half_done')).toBe(false);
        expect(await columns(c, 'sessions')).not.toContain('broken_col');
        // The advisory lock was released: another session can take it immediately.
        const lock = await c.query(`SELECT pg_try_advisory_lock(x'5353494d49475241'::bigint) AS ok`);
        expect(lock.rows[0].ok).toBe(true);
        await c.query(`SELECT pg_advisory_unlock(x'5353494d49475241'::bigint)`);
      });

      // Once the file is fixed, the next run applies just that one.
      fs.writeFileSync(path.join(dir, '002_broken.sql'), '-- version: v9.9.9-broken\nCREATE TABLE half_done (id INT);\n');
      expect(await migrate(url)).toEqual({ applied: ['v9.9.9-broken'], skipped: ['v1.0.0-baseline', 'v2.0.0-agents'] });
    } finally {
      if (saved === undefined) delete process.env.MIGRATIONS_DIR;
      else process.env.MIGRATIONS_DIR = saved;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
