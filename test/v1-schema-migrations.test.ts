/**
 * Our schema migrations against real v1 databases: StreamSpace v1.0.0 exactly as v1's own code
 * created it (with `state`, and with the older `status`), and the older fixture of
 * ./harness/v1-fixture.ts (with `status`). For each: every migration applies, a second run applies
 * and fails nothing, the v2 tables exist, every v1 table keeps its rows and v1 values (count and a
 * checksum over v1's own columns), and v1 keeps working: its session writes, done the v1 way
 * after the migration, are what v2 reads in sessions.state.
 */
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Client } from 'pg';
import { manifestSpec } from '../activities/templates';
import { listMigrations, migrate } from '../db/migrate';
import { TEST_ENV } from './harness/env';
import { waitFor } from './harness/stack';
import { createV1Database } from './harness/v1-fixture';
import { createV1_0_0Database, V1_0_0_CATALOG, V1TableState, v1TableStates, V1Writer } from './harness/v1-install';

jest.setTimeout(180_000);

const suffix = `${process.pid}_${Date.now().toString(36)}`;
const NOW = new Date('2025-06-01T12:00:00.000Z');
const ALL_VERSIONS = listMigrations().map((m) => m.version);
const V2_TABLES = ['agents', 'agent_commands', 'redis_agent_connections', 'leader_election_leases'];

async function query<T = any>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql, params)).rows as T[];
  } finally {
    await c.end();
  }
}

async function columnsOf(url: string): Promise<Record<string, string[]>> {
  const rows = await query<{ table_name: string; column_name: string }>(
    url,
    `SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position`,
  );
  const out: Record<string, string[]> = {};
  for (const r of rows) (out[r.table_name] ??= []).push(r.column_name);
  return out;
}

interface Install {
  url: string;
  /** table → v1's columns */
  v1Columns: Record<string, string[]>;
  /** 'status' on the status variants */
  stateColumn: 'state' | 'status';
  /** A v1 user id to own the session v1 writes after the migration. */
  userId: string;
  template: string;
  writerMode: 'v1.0.0' | 'legacy';
  /** v1.0.0's catalog_templates names (the older fixture has none). */
  catalog?: string[];
  drop(): Promise<void>;
}

const variants: Array<[string, () => Promise<Install>]> = [
  [
    'v1.0.0 as v1 created it (sessions.state, a pro license)',
    async () => {
      const fx = await createV1_0_0Database(TEST_ENV.pgAdminUrl, { name: `v1mig_state_${suffix}`, seed: 11, now: NOW, proLicense: true });
      return { ...fx, userId: fx.users[1].id, template: 'firefox-browser', writerMode: 'v1.0.0', catalog: fx.templates };
    },
  ],
  [
    'v1.0.0 with sessions.status',
    async () => {
      const fx = await createV1_0_0Database(TEST_ENV.pgAdminUrl, { name: `v1mig_status_${suffix}`, seed: 12, now: NOW, statusColumn: true });
      return { ...fx, userId: fx.users[2].id, template: 'firefox-browser', writerMode: 'v1.0.0', catalog: fx.templates };
    },
  ],
  [
    'the older v1 fixture with sessions.status',
    async () => {
      const fx = await createV1Database(TEST_ENV.pgAdminUrl, { name: `v1mig_old_${suffix}`, statusColumn: true, sessions: 60, seed: 5, now: NOW });
      return {
        url: fx.url,
        v1Columns: await columnsOf(fx.url),
        stateColumn: fx.stateColumn,
        userId: fx.sessions[0].user,
        template: fx.sessions[0].template,
        writerMode: 'legacy',
        drop: fx.drop,
      };
    },
  ],
];

describe.each(variants)('schema migrations on %s', (_label, make) => {
  let install: Install;
  let before: Record<string, V1TableState>;
  const logs: string[] = [];

  beforeAll(async () => {
    install = await make();
    before = await v1TableStates(install.url, install.v1Columns);
  });
  afterAll(async () => {
    await install?.drop();
  });

  test('apply once, then a second run applies and fails nothing; v1 data is untouched', async () => {
    const first = await migrate(install.url, { log: (m) => logs.push(m) });
    expect(first).toEqual({ applied: ALL_VERSIONS, skipped: [] });
    for (const m of listMigrations()) expect(logs.some((l) => l.startsWith('applied') && l.includes(m.file))).toBe(true);

    const second = await migrate(install.url, { log: (m) => logs.push(m) });
    expect(second).toEqual({ applied: [], skipped: ALL_VERSIONS });

    const versions = (await query<{ version: string }>(install.url, 'SELECT version FROM schema_migrations ORDER BY version')).map((r) => r.version);
    expect(versions).toEqual([...ALL_VERSIONS].sort());
    expect(versions).toEqual(expect.arrayContaining(['v2.0.0-agents', 'v2.0.0-beta1-ha']));
    for (const t of V2_TABLES) expect((await query(install.url, 'SELECT to_regclass($1)::text AS t', [t]))[0].t).toBe(t);

    // Every v1 table: same rows, same values in v1's columns (none renamed or dropped).
    const after = await v1TableStates(install.url, install.v1Columns);
    expect(after).toEqual(before);
    if (install.v1Columns.platform_controllers) {
      // v1.0.0's own platform_controllers (controller_id, platform) is left as v1 made it.
      expect((await columnsOf(install.url)).platform_controllers).toEqual(install.v1Columns.platform_controllers);
    }
    if (install.catalog) {
      // v2 serves v1's catalog as v1's sync stored it (Go field names: Spec.BaseImage, ...).
      const served = await query(install.url, `SELECT name, manifest FROM template_catalog WHERE source = 'v1-catalog' ORDER BY name`);
      expect(served.map((t) => t.name)).toEqual([...install.catalog].sort());
      for (const t of served) {
        expect(manifestSpec(t.manifest)).toMatchObject({
          baseImage: V1_0_0_CATALOG[t.name].baseImage,
          defaultResources: { memory: V1_0_0_CATALOG[t.name].memory },
        });
      }
    }
  });

  test('v1 keeps working after the migration: its session writes are what v2 reads in sessions.state', async () => {
    await migrate(install.url); // a no-op after the test above; says why if the migrations cannot apply
    const writer = await V1Writer.connect(install.url, { mode: install.writerMode });
    try {
      expect(writer.stateColumn).toBe(install.stateColumn);
      const v2State = async (id: string) => (await query<{ state: string }>(install.url, 'SELECT state FROM sessions WHERE id = $1', [id]))[0]?.state;
      const id = `v1-after-migration-${install.stateColumn}-1a2b3c4d`;

      // CreateSession as the API handler issues it: state 'pending'.
      await writer.createSession({ id, userId: install.userId, templateName: install.template, state: 'pending', idleTimeout: '30m' });
      expect(await writer.readState(id)).toBe('pending');
      expect(await v2State(id)).toBe('pending');

      // The controller's status event, then the v1 state updates and the soft delete.
      await writer.updateSessionStatus(id, 'running', `https://${id}.streamspace.local`, `ss-v1-${install.template}`);
      expect(await v2State(id)).toBe('running');
      await writer.updateSessionState(id, 'hibernated');
      expect(await v2State(id)).toBe('hibernated');
      // CreateSession again for the same id (cacheSessionInDB): the ON CONFLICT branch.
      await writer.createSession({ id, userId: install.userId, templateName: install.template, state: 'running', appType: 'desktop' });
      expect(await v2State(id)).toBe('running');
      await writer.deleteSession(id);
      expect(await writer.readState(id)).toBe('deleted');
      expect(await v2State(id)).toBe('deleted');

      // A second session v1 creates and fails: v2 lists it with v1's state.
      const failed = `v1-after-migration-${install.stateColumn}-5e6f7a8b`;
      await writer.createSession({ id: failed, userId: install.userId, templateName: install.template, state: 'pending' });
      await writer.updateSessionState(failed, 'failed');
      const rows = await query(install.url, `SELECT id, state FROM sessions WHERE id LIKE 'v1-after-migration-%' ORDER BY id`);
      expect(rows).toEqual([
        { id, state: 'deleted' },
        { id: failed, state: 'failed' },
      ]);
      await expect(writer.updateSessionState('no-such-session', 'running')).rejects.toThrow('session not found');
    } finally {
      await writer.close();
    }
  });
});

describe('v1 writes while the migrations apply (blue-green): no lock cycle with v1', () => {
  test('each file, applied while a v1 transaction holds a session row and then writes a session: both finish', async () => {
    const fx = await createV1Database(TEST_ENV.pgAdminUrl, { name: `v1mig_live_${suffix}`, statusColumn: true, sessions: 10, seed: 7, now: NOW });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ss-mig-live-'));
    const writer = await V1Writer.connect(fx.url, { mode: 'legacy' });
    const watcher = new Client({ connectionString: fx.url });
    await watcher.connect();
    try {
      const held = fx.sessions[0];
      for (const [i, m] of listMigrations().entries()) {
        // One more file each round: migrate() applies just this one.
        copyFileSync(m.path, path.join(dir, m.file));
        // v1 (one of its open transactions) holds a sessions row lock ...
        await writer.client.query('BEGIN');
        await writer.client.query('UPDATE sessions SET updated_at = updated_at WHERE id = $1', [held.id]);
        let settled = false;
        const run = migrate(fx.url, { dir }).then(
          () => 'ok',
          (err: Error) => err.message,
        );
        void run.finally(() => (settled = true));
        // ... while the file runs, until it waits for that transaction (or is done: it does not touch sessions) ...
        await waitFor(
          `${m.file} waiting for v1 or done`,
          async () =>
            settled ||
            (await watcher.query(`SELECT 1 FROM pg_stat_activity WHERE application_name = 'streamspace-migrate' AND wait_event_type = 'Lock'`)).rowCount! > 0,
          30_000,
          20,
        );
        // ... then writes a session the way v1 does, and commits.
        let v1 = 'ok';
        try {
          await writer.createSession({ id: `v1-live-${i}`, userId: held.user, templateName: held.template, state: 'running' }, NOW);
          await writer.client.query('COMMIT');
        } catch (err) {
          v1 = (err as Error).message;
          await writer.client.query('ROLLBACK').catch(() => undefined);
        }
        expect({ file: m.file, v1, migration: await run }).toEqual({ file: m.file, v1: 'ok', migration: 'ok' });
      }
      const rows = await query(fx.url, `SELECT count(*)::int AS n FROM sessions WHERE id LIKE 'v1-live-%'`);
      expect(rows[0].n).toBe(listMigrations().length);
    } finally {
      await writer.client.query('ROLLBACK').catch(() => undefined);
      await writer.close();
      await watcher.end();
      rmSync(dir, { recursive: true, force: true });
      await fx.drop();
    }
  });
});
