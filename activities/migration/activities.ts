/**
 * Activities of the v1 → v2 migration. Each is idempotent (a retried or resumed phase converges
 * on the same result) and reports progress by heartbeat.
 */
import { ApplicationFailure, Context } from '@temporalio/activity';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import Redis from 'ioredis';
import { Client } from 'pg';
import { ROUTING_KEY, RoutingState } from '../../api/routing/state';
import { migrate } from '../../db/migrate';
import type { MigrationOptions } from '../../workflows/migration-api';
import { convertSession, convertTemplate } from './convert';
import { saveImportedSession } from './store';
import { Kube, V1Object } from './kube';

const run = promisify(execFile);

export interface Check {
  name: string;
  ok: boolean;
  detail: string;
}
export interface PreflightReport {
  ok: boolean;
  checks: Check[];
  counts: { dbSessions: number; crdSessions: number; crdTemplates: number };
}
export interface TableState {
  count: number;
  checksum: string;
}
export interface BackupManifest {
  dir: string;
  createdAt: string;
  files: Array<{ file: string; sha256: string; bytes: number }>;
  tables: Record<string, TableState>;
  deployments: Record<string, number | null>;
}
export interface ImportBatchResult {
  imported: number;
  failed: number;
  failures: Array<{ kind: string; id: string; namespace: string | null; reason: string }>;
}

/** v1 tables whose contents a rollback must bring back exactly. */
const V1_TABLES = ['users', 'templates', 'sessions'];

export interface MigrationActivityDeps {
  redisUrl: string | undefined;
}

export type MigrationActivities = ReturnType<typeof createMigrationActivities>;

export function createMigrationActivities(deps: MigrationActivityDeps) {
  async function withDb<T>(url: string, fn: (c: Client) => Promise<T>): Promise<T> {
    const c = new Client({ connectionString: url, application_name: 'streamspace-migration' });
    await c.connect();
    try {
      return await fn(c);
    } finally {
      await c.end().catch(() => undefined);
    }
  }

  async function tableStates(url: string): Promise<Record<string, TableState>> {
    return withDb(url, async (c) => {
      const out: Record<string, TableState> = {};
      for (const t of V1_TABLES) {
        const exists = await c.query('SELECT to_regclass($1) AS r', [t]);
        if (!exists.rows[0].r) continue;
        const r = await c.query(`SELECT count(*)::int AS n, COALESCE(md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))), '') AS sum FROM "${t}" x`);
        out[t] = { count: r.rows[0].n, checksum: r.rows[0].sum };
      }
      return out;
    });
  }

  async function withRedis<T>(fn: (r: Redis) => Promise<T>): Promise<T> {
    if (!deps.redisUrl) throw ApplicationFailure.nonRetryable('the cut-over needs REDIS_URL (routing shared by all API pods)', 'ConfigError');
    const r = new Redis(deps.redisUrl, { lazyConnect: true, maxRetriesPerRequest: 2 });
    await r.connect();
    try {
      return await fn(r);
    } finally {
      r.disconnect();
    }
  }

  const runDir = (o: MigrationOptions) => path.join(o.backupDir, o.runId);
  const beat = (detail: unknown) => Context.current().heartbeat(detail);

  async function sha256(file: string): Promise<string> {
    const h = createHash('sha256');
    for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
    return h.digest('hex');
  }

  /** v1 sessions by id: CRDs (first namespace wins; later ones are duplicates) and database rows. */
  async function v1Sources(o: MigrationOptions) {
    const kube = new Kube(o.v1.kubeconfig);
    const crds = await kube.listV1('sessions', o.v1.namespaces);
    const rows = await withDb(o.v1.databaseUrl, async (c) => {
      const r = await c.query(`SELECT * FROM sessions WHERE COALESCE(platform_metadata->>'source', 'v1.x') = 'v1.x' ORDER BY id`);
      return r.rows as Array<Record<string, unknown>>;
    });
    const byId = new Map<string, { crd?: V1Object; row?: Record<string, unknown>; duplicates: V1Object[] }>();
    for (const crd of crds) {
      const id = String(crd.metadata?.name);
      const e = byId.get(id);
      if (e?.crd) e.duplicates.push(crd);
      else byId.set(id, { ...(e ?? { duplicates: [] }), crd, duplicates: e?.duplicates ?? [] });
    }
    for (const row of rows) {
      const id = String(row.id);
      const e = byId.get(id);
      if (e) e.row = row;
      else byId.set(id, { row, duplicates: [] });
    }
    return byId;
  }

  return {
    async preflight(o: MigrationOptions): Promise<PreflightReport> {
      const checks: Check[] = [];
      const check = async (name: string, fn: () => Promise<string>) => {
        try {
          checks.push({ name, ok: true, detail: await fn() });
        } catch (err) {
          checks.push({ name, ok: false, detail: (err as Error).message });
        }
      };
      const counts = { dbSessions: 0, crdSessions: 0, crdTemplates: 0 };
      await check('v1 API healthy', async () => {
        const r = await fetch(new URL('/health', o.v1.apiUrl), { signal: AbortSignal.timeout(5000) });
        if (!r.ok) throw new Error(`GET /health answered ${r.status}`);
        return `GET ${o.v1.apiUrl}/health → ${r.status}`;
      });
      await check('v1 database reachable', () =>
        withDb(o.v1.databaseUrl, async (c) => {
          const r = await c.query(`SELECT count(*)::int AS n FROM sessions`);
          counts.dbSessions = r.rows[0].n;
          return `${counts.dbSessions} sessions`;
        }),
      );
      await check('v1 CRDs readable', async () => {
        const kube = new Kube(o.v1.kubeconfig);
        counts.crdSessions = (await kube.listV1('sessions', o.v1.namespaces)).length;
        counts.crdTemplates = (await kube.listV1('templates', o.v1.namespaces)).length;
        return `${counts.crdSessions} Session and ${counts.crdTemplates} Template CRDs in ${o.v1.namespaces.join(', ')}`;
      });
      await check('v1 Deployments present', async () => {
        const kube = new Kube(o.v1.kubeconfig);
        const found = await Promise.all(o.v1.deployments.map(async (d) => `${d}=${await kube.replicas(d)}`));
        return found.join(', ');
      });
      await check('v2 control plane ready', async () => {
        const r = await fetch(o.v2.readyUrl, { signal: AbortSignal.timeout(5000) });
        if (!r.ok) throw new Error(`${o.v2.readyUrl} answered ${r.status}: ${await r.text()}`);
        return `${o.v2.readyUrl} → ${r.status}`;
      });
      await check('pg_dump available', async () => (await run('pg_dump', ['--version'])).stdout.trim());
      if (o.strategy !== 'fresh-install' || o.cohorts.length) {
        await check('routing store (Redis) reachable', () => withRedis(async (r) => `PING → ${await r.ping()}`));
      }
      await check('backup directory writable', async () => {
        await mkdir(runDir(o), { recursive: true });
        await writeFile(path.join(runDir(o), '.preflight'), new Date().toISOString());
        return runDir(o);
      });
      return { ok: checks.every((c) => c.ok), checks, counts };
    },

    /** pg_dump (verified with pg_restore --list), CRDs, Deployments, Secret; a manifest with checksums. */
    async backup(o: MigrationOptions): Promise<BackupManifest> {
      const dir = runDir(o);
      const manifestPath = path.join(dir, 'manifest.json');
      if (existsSync(manifestPath)) {
        const m = JSON.parse(await readFile(manifestPath, 'utf8')) as BackupManifest;
        const intact = await Promise.all(m.files.map(async (f) => existsSync(path.join(dir, f.file)) && (await sha256(path.join(dir, f.file))) === f.sha256));
        if (intact.every(Boolean)) return m; // a resumed run reuses its own, verified backup
      }
      await mkdir(dir, { recursive: true });
      beat({ step: 'pg_dump' });
      const dump = path.join(dir, 'database.dump');
      await run('pg_dump', ['--format=custom', `--file=${dump}`, '--dbname', o.v1.databaseUrl], { maxBuffer: 64 << 20 });
      const list = await run('pg_restore', ['--list', dump], { maxBuffer: 64 << 20 });
      if (!/TABLE DATA .*sessions/.test(list.stdout)) throw new Error('pg_restore --list shows no sessions data: the dump is not usable');
      beat({ step: 'kubernetes objects' });
      const kube = new Kube(o.v1.kubeconfig);
      const json = async (file: string, data: unknown) => writeFile(path.join(dir, file), JSON.stringify(data, null, 2));
      await json('sessions-crds.json', { items: await kube.listV1('sessions', o.v1.namespaces) });
      await json('templates-crds.json', { items: await kube.listV1('templates', o.v1.namespaces) });
      await json('crd-definitions.json', {
        items: (await Promise.all(['sessions.stream.space', 'templates.stream.space'].map((n) => kube.readCrd(n)))).filter(Boolean),
      });
      const deployments: Record<string, number | null> = {};
      const deploymentObjects: unknown[] = [];
      for (const ref of [...o.v1.deployments, ...o.v2.deployments]) {
        deployments[ref] = await kube.replicas(ref);
        deploymentObjects.push(await kube.readDeployment(ref));
      }
      await json('deployments.json', { items: deploymentObjects.filter(Boolean) });
      const ns = o.v1.namespaces[0];
      await json('secrets.json', { items: [await kube.readSecret(ns, 'streamspace-secrets')].filter(Boolean) });
      const files = [];
      for (const file of ['database.dump', 'sessions-crds.json', 'templates-crds.json', 'crd-definitions.json', 'deployments.json', 'secrets.json']) {
        const p = path.join(dir, file);
        files.push({ file, sha256: await sha256(p), bytes: (await readFile(p)).length });
      }
      const manifest: BackupManifest = { dir, createdAt: new Date().toISOString(), files, tables: await tableStates(o.v1.databaseUrl), deployments };
      await writeFile(manifestPath, JSON.stringify(manifest, null, 2));
      return manifest;
    },

    async scaleDeployments(o: MigrationOptions, targets: Record<string, number>): Promise<Record<string, number | null>> {
      const kube = new Kube(o.v1.kubeconfig);
      const previous: Record<string, number | null> = {};
      for (const [ref, n] of Object.entries(targets)) previous[ref] = await kube.scale(ref, n);
      return previous;
    },

    /** The project's migration runner, then the spec's verification queries. */
    async migrateSchema(o: MigrationOptions): Promise<{ applied: string[]; skipped: string[]; verified: string[] }> {
      const r = await migrate(o.v1.databaseUrl, { log: () => undefined });
      const verified = await withDb(o.v1.databaseUrl, async (c) => {
        const missing: string[] = [];
        for (const t of ['agents', 'agent_commands', 'platform_controllers', 'redis_agent_connections', 'leader_election_leases']) {
          if (!(await c.query('SELECT to_regclass($1) AS r', [t])).rows[0].r) missing.push(`table ${t}`);
        }
        const cols = await c.query(`SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'sessions'`);
        const have = new Set(cols.rows.map((x) => x.column_name));
        for (const col of ['agent_id', 'platform', 'platform_metadata', 'cluster_id', 'tags', 'state']) if (!have.has(col)) missing.push(`sessions.${col}`);
        const versions = await c.query(`SELECT version FROM schema_migrations WHERE version LIKE 'v2.0%'`);
        for (const v of ['v2.0.0-agents', 'v2.0.0-beta1-ha']) if (!versions.rows.some((x) => x.version === v)) missing.push(`schema_migrations ${v}`);
        if (missing.length) throw ApplicationFailure.nonRetryable(`schema verification failed: missing ${missing.join(', ')}`, 'SchemaVerification');
        return [
          'tables agents, agent_commands, platform_controllers, redis_agent_connections, leader_election_leases',
          'sessions v2 columns',
          'schema_migrations v2.0.0-agents, v2.0.0-beta1-ha',
        ];
      });
      return { ...r, verified };
    },

    /** Waits (heartbeating) until every platform in use has an online agent. */
    async waitForAgents(o: MigrationOptions): Promise<Record<string, string[]>> {
      const url = o.v2.databaseUrl ?? o.v1.databaseUrl;
      for (;;) {
        const online = await withDb(url, async (c) => {
          const r = await c.query(`SELECT agent_id, platform FROM agents WHERE status = 'online' AND last_heartbeat > NOW() - INTERVAL '2 minutes'`);
          return r.rows as Array<{ agent_id: string; platform: string }>;
        });
        const byPlatform: Record<string, string[]> = {};
        for (const p of o.v2.platforms) byPlatform[p] = online.filter((a) => a.platform === p).map((a) => a.agent_id);
        const missing = o.v2.platforms.filter((p) => !byPlatform[p].length);
        if (!missing.length) return byPlatform;
        beat({ waitingFor: missing });
        await new Promise((r) => setTimeout(r, 1000));
      }
    },

    /** Imports v1 templates (CRDs) and lists the session ids to import, in a stable order. */
    async planImport(o: MigrationOptions): Promise<{ sessionIds: string[]; templates: ImportBatchResult }> {
      const kube = new Kube(o.v1.kubeconfig);
      const result: ImportBatchResult = { imported: 0, failed: 0, failures: [] };
      await withDb(o.v1.databaseUrl, async (c) => {
        await c.query(`CREATE TABLE IF NOT EXISTS migration_import_results (
          run_id VARCHAR(255) NOT NULL, kind VARCHAR(20) NOT NULL, source_id VARCHAR(255) NOT NULL,
          namespace VARCHAR(255) NOT NULL DEFAULT '', status VARCHAR(20) NOT NULL, reason TEXT,
          imported_at TIMESTAMP DEFAULT NOW(), PRIMARY KEY (run_id, kind, source_id, namespace))`);
        for (const crd of await kube.listV1('templates', o.v1.namespaces)) {
          const t = convertTemplate(crd);
          const id = String(crd.metadata?.name ?? '?');
          const ns = String(crd.metadata?.namespace ?? '');
          if (t.ok) {
            await c.query(
              `INSERT INTO templates (name, display_name, description, category, icon, manifest) VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (name) DO UPDATE SET manifest = EXCLUDED.manifest, display_name = EXCLUDED.display_name, updated_at = NOW()`,
              [t.name, t.manifest.displayName, t.manifest.description ?? null, t.manifest.category ?? null, t.manifest.icon ?? null, t.manifest],
            );
            result.imported++;
          } else {
            result.failed++;
            result.failures.push({ kind: 'template', id, namespace: ns, reason: t.reason });
          }
          await c.query(
            `INSERT INTO migration_import_results (run_id, kind, source_id, namespace, status, reason) VALUES ($1, 'template', $2, $3, $4, $5)
             ON CONFLICT (run_id, kind, source_id, namespace) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason`,
            [o.runId, id, ns, t.ok ? 'imported' : 'failed', t.ok ? null : t.reason],
          );
        }
      });
      const sources = await v1Sources(o);
      return { sessionIds: [...sources.keys()].sort(), templates: result };
    },

    /** Imports one batch of sessions; upserts make a re-run (after a crash) create no duplicates. */
    async importSessions(o: MigrationOptions, ids: string[]): Promise<ImportBatchResult> {
      const sources = await v1Sources(o);
      const result: ImportBatchResult = { imported: 0, failed: 0, failures: [] };
      await withDb(o.v1.databaseUrl, async (c) => {
        const templates = new Set((await c.query('SELECT name FROM templates')).rows.map((r) => r.name as string));
        const record = async (id: string, ns: string, status: string, reason: string | null) =>
          c.query(
            `INSERT INTO migration_import_results (run_id, kind, source_id, namespace, status, reason) VALUES ($1, 'session', $2, $3, $4, $5)
             ON CONFLICT (run_id, kind, source_id, namespace) DO UPDATE SET status = EXCLUDED.status, reason = EXCLUDED.reason`,
            [o.runId, id, ns, status, reason],
          );
        for (const id of ids) {
          const src = sources.get(id);
          if (!src) {
            result.failed++;
            result.failures.push({ kind: 'session', id, namespace: null, reason: 'vanished from v1 since the import was planned' });
            await record(id, '', 'failed', 'vanished from v1 since the import was planned');
            continue;
          }
          for (const dup of src.duplicates) {
            const ns = String(dup.metadata?.namespace ?? '');
            const reason = `duplicate id: also in namespace ${src.crd?.metadata?.namespace}; imported from there`;
            result.failed++;
            result.failures.push({ kind: 'session', id, namespace: ns, reason });
            await record(id, ns, 'failed', reason);
          }
          const conv = convertSession(src, templates);
          const ns = String(src.crd?.metadata?.namespace ?? src.row?.namespace ?? '');
          if (!conv.ok) {
            result.failed++;
            result.failures.push({ kind: 'session', id, namespace: ns, reason: conv.reason });
            await record(id, ns, 'failed', conv.reason);
            continue;
          }
          await saveImportedSession(c, conv.record, { onConflict: 'update', runId: o.runId });
          await record(id, ns, 'imported', null);
          result.imported++;
        }
      });
      return result;
    },

    async setRouting(state: Omit<RoutingState, 'updatedAt'>): Promise<void> {
      await withRedis((r) => r.set(ROUTING_KEY, JSON.stringify({ ...state, updatedAt: new Date().toISOString() })));
    },

    /** Health gates for auto-approval: session failure rate, agents online, v2 ready. */
    async checkHealthGates(o: MigrationOptions): Promise<{ ok: boolean; reasons: string[] }> {
      const reasons: string[] = [];
      const url = o.v2.databaseUrl ?? o.v1.databaseUrl;
      await withDb(url, async (c) => {
        const r = await c.query(
          `SELECT count(*) FILTER (WHERE state = 'failed')::int AS failed, count(*)::int AS total FROM sessions WHERE created_at > NOW() - INTERVAL '1 hour'`,
        );
        const { failed, total } = r.rows[0];
        if (total && failed / total > o.approval.maxSessionFailureRate)
          reasons.push(`session failure rate ${((failed / total) * 100).toFixed(1)}% > ${(o.approval.maxSessionFailureRate * 100).toFixed(1)}%`);
        for (const p of o.v2.platforms) {
          const a = await c.query(`SELECT 1 FROM agents WHERE platform = $1 AND status = 'online' LIMIT 1`, [p]);
          if (!a.rowCount) reasons.push(`no ${p} agent online`);
        }
      });
      const ready = await fetch(o.v2.readyUrl, { signal: AbortSignal.timeout(5000) }).then(
        (r) => r.ok,
        () => false,
      );
      if (!ready) reasons.push('v2 control plane not ready');
      return { ok: reasons.length === 0, reasons };
    },

    async deleteV1Crds(o: MigrationOptions): Promise<string[]> {
      const kube = new Kube(o.v1.kubeconfig);
      const deleted: string[] = [];
      for (const n of ['sessions.stream.space', 'templates.stream.space']) if (await kube.deleteCrd(n)) deleted.push(n);
      return deleted;
    },

    async writeArchive(o: MigrationOptions, report: unknown): Promise<string> {
      const dir = runDir(o);
      await writeFile(path.join(dir, 'report.json'), JSON.stringify(report, null, 2));
      const archive = path.join(o.backupDir, `streamspace-v1-archive-${o.runId}.tar.gz`);
      await run('tar', ['-czf', archive, '-C', o.backupDir, o.runId]);
      return archive;
    },

    // ------------------------------------------------------------------ rollback steps

    /** Before a restore: save what v2 created meanwhile (sessions not from v1, agents, commands). */
    async exportV2Data(o: MigrationOptions): Promise<{ file: string; sessions: number }> {
      const file = path.join(runDir(o), 'v2-created-before-rollback.json');
      const data = await withDb(o.v1.databaseUrl, async (c) => {
        const hasV2 = (await c.query(`SELECT to_regclass('agents') AS r`)).rows[0].r;
        if (!hasV2) return { sessions: [], agents: [], agent_commands: [] };
        const sessions = await c.query(`SELECT * FROM sessions WHERE COALESCE(platform_metadata->>'source', '') <> 'v1.x'`);
        const agents = await c.query('SELECT * FROM agents');
        const cmds = await c.query('SELECT * FROM agent_commands');
        return { sessions: sessions.rows, agents: agents.rows, agent_commands: cmds.rows };
      });
      await writeFile(file, JSON.stringify({ exportedAt: new Date().toISOString(), ...data }, null, 2));
      return { file, sessions: data.sessions.length };
    },

    /** The spec's restore: drop and recreate the database, pg_restore, then verify against the backup. */
    async restoreDatabase(o: MigrationOptions, manifest: BackupManifest): Promise<Record<string, TableState>> {
      const dump = path.join(manifest.dir, 'database.dump');
      const expected = manifest.files.find((f) => f.file === 'database.dump')!;
      if ((await sha256(dump)) !== expected.sha256) throw ApplicationFailure.nonRetryable(`backup ${dump} does not match its checksum`, 'BackupCorrupt');
      const current = await tableStates(o.v1.databaseUrl).catch(() => ({}) as Record<string, TableState>);
      if (JSON.stringify(current) === JSON.stringify(manifest.tables)) return current; // already restored
      const target = new URL(o.v1.databaseUrl);
      const name = decodeURIComponent(target.pathname.slice(1));
      const admin = new URL(o.v1.databaseUrl);
      admin.pathname = '/postgres';
      await withDb(admin.toString(), async (c) => {
        await c.query(`DROP DATABASE IF EXISTS "${name.replace(/"/g, '""')}" WITH (FORCE)`);
        await c.query(`CREATE DATABASE "${name.replace(/"/g, '""')}"`);
      });
      await run('pg_restore', ['--no-owner', '--no-privileges', '--exit-on-error', '--dbname', o.v1.databaseUrl, dump], { maxBuffer: 64 << 20 });
      const after = await tableStates(o.v1.databaseUrl);
      for (const [t, s] of Object.entries(manifest.tables)) {
        if (after[t]?.count !== s.count || after[t]?.checksum !== s.checksum)
          throw ApplicationFailure.nonRetryable(
            `restore verification failed for ${t}: ${JSON.stringify(after[t])} ≠ ${JSON.stringify(s)}`,
            'RestoreVerification',
          );
      }
      return after;
    },

    /** Brings back the v1 CRDs and their objects from the backup if decommission removed them. */
    async restoreV1Crds(o: MigrationOptions, manifest: BackupManifest): Promise<number> {
      const kube = new Kube(o.v1.kubeconfig);
      const defs = JSON.parse(await readFile(path.join(manifest.dir, 'crd-definitions.json'), 'utf8')).items as any[];
      const sessions = JSON.parse(await readFile(path.join(manifest.dir, 'sessions-crds.json'), 'utf8')).items as V1Object[];
      const templates = JSON.parse(await readFile(path.join(manifest.dir, 'templates-crds.json'), 'utf8')).items as V1Object[];
      let restored = 0;
      for (const def of defs) {
        const plural = def.spec.names.plural;
        const objects = plural === 'sessions' ? sessions : plural === 'templates' ? templates : [];
        const existing = await kube.listV1(plural, o.v1.namespaces).catch(() => []);
        if ((await kube.readCrd(def.metadata.name)) && existing.length >= objects.length) continue;
        await kube.restoreCrd(def, objects);
        restored += objects.length;
      }
      return restored;
    },

    async tableStates(o: MigrationOptions): Promise<Record<string, TableState>> {
      return tableStates(o.v1.databaseUrl);
    },
  };
}
