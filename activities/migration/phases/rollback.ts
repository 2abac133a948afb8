/**
 * Rollback: undo what v2 added, keeping everything v1 wrote meanwhile.
 *
 *  - stopV2: scale v2 down, except the worker running this rollback.
 *  - exportV2Data: save what v2 created (its sessions, agents, commands, the import's records).
 *  - undoV2Changes: stop the session workflows; put back the v1 rows the migration rewrote (unless
 *    v1 changed them since); delete v2's own rows; drop every view, trigger, table, index, column
 *    and function the backup's schema snapshot does not have; restore changed defaults; verify the
 *    schema equals the snapshot. v1 rows written after the backup stay.
 *  - restoreDatabase (last resort): pg_restore into a NEW database, verify counts and checksums
 *    against the backup, then swap names (the current database is kept, renamed). A retry never
 *    drops a database that is not its own half-restored copy.
 *  - restoreV1Crds, restoreReplicas: v1's objects, and the replica counts of the backup manifest.
 */
import { ApplicationFailure } from '@temporalio/activity';
import { WorkflowNotFoundError } from '@temporalio/client';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Kube, V1Object } from '../kube';
import {
  beat,
  fingerprintSql,
  MigrationActivityDeps,
  quoteIdent,
  runDir,
  pgTarget,
  redacting,
  runProcess,
  v1DatabaseUrl,
  schemaSnapshot,
  snapshotDiff,
  sha256,
  tableStates,
  TableState,
  withDb,
} from '../common';
import type { BackupManifest } from './backup';
import type { MigrationOptions } from '../../../workflows/migration-api';
import type { Client } from 'pg';

/** Key column of the v1 tables the import writes. */
const KEYS: Record<string, string> = { sessions: 'id', templates: 'name' };

export function isOwnWorker(ref: string, deps: MigrationActivityDeps): boolean {
  const own = deps.workerDeployment ?? process.env.STREAMSPACE_WORKER_DEPLOYMENT;
  return own ? ref === own : /\/streamspace-worker$/.test(ref);
}

async function exists(c: Client, sql: string, args: unknown[]): Promise<boolean> {
  return ((await c.query(sql, args)).rowCount ?? 0) > 0;
}

export function rollbackActivities(deps: MigrationActivityDeps) {
  return redacting({
    /** Scales v2 down, never the worker running this rollback (it is left as it is). */
    async stopV2(o: MigrationOptions): Promise<{ scaled: Record<string, number | null>; kept: string[] }> {
      const kube = new Kube(o.v1.kubeconfig);
      const scaled: Record<string, number | null> = {};
      const kept: string[] = [];
      for (const ref of o.v2.deployments) {
        if (isOwnWorker(ref, deps)) kept.push(ref);
        else scaled[ref] = await kube.scale(ref, 0);
      }
      return { scaled, kept };
    },

    /** Before anything is dropped: what v2 created, and the import's records, into the run's folder. */
    async exportV2Data(o: MigrationOptions): Promise<{ file: string; sessions: number }> {
      const file = path.join(runDir(o), 'v2-created-before-rollback.json');
      const data = await withDb(await v1DatabaseUrl(o), async (c) => {
        const has = async (t: string) => !!(await c.query(`SELECT to_regclass($1) AS r`, [t])).rows[0].r;
        const hasWf = await exists(
          c,
          `SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'sessions' AND column_name = 'workflow_id'`,
          [],
        );
        const hasOriginals = await has('migration_originals');
        const sessions = hasWf
          ? (
              await c.query(
                `SELECT * FROM sessions x WHERE x.workflow_id IS NOT NULL ${hasOriginals ? `AND NOT EXISTS (SELECT 1 FROM migration_originals m WHERE m.tbl = 'sessions' AND m.key = x.id)` : ''}`,
              )
            ).rows
          : [];
        const all = async (t: string) => ((await has(t)) ? (await c.query(`SELECT * FROM ${quoteIdent(t)}`)).rows : []);
        return {
          sessions,
          agents: await all('agents'),
          agent_commands: await all('agent_commands'),
          migration_import_results: await all('migration_import_results'),
        };
      });
      await writeFile(file, JSON.stringify({ exportedAt: new Date().toISOString(), ...data }));
      return { file, sessions: data.sessions.length };
    },

    async undoV2Changes(o: MigrationOptions, manifest: BackupManifest): Promise<string> {
      const want = manifest.schema;
      return withDb(await v1DatabaseUrl(o), async (c) => {
        const have = await schemaSnapshot(c);
        const done: string[] = [];
        const sessionCols = have.tables.sessions?.map((x) => x.name) ?? [];

        // Session workflows (v2-created and adopted): v2 stops managing anything.
        if (sessionCols.includes('workflow_id') && deps.adoption) {
          const wf = (await c.query(`SELECT workflow_id FROM sessions WHERE workflow_id IS NOT NULL`)).rows.map((r) => r.workflow_id as string);
          for (const id of wf) {
            await deps.adoption.temporal.workflow
              .getHandle(id)
              .terminate('v1 → v2 migration rolled back')
              .catch((err) => {
                if (!(err instanceof WorkflowNotFoundError)) throw err;
              });
            beat({ step: 'terminate session workflows' });
          }
          if (wf.length) done.push(`${wf.length} session workflows stopped`);
        }

        await c.query('BEGIN');
        try {
          // v1 keeps writing while this runs. Take the strongest lock on the tables this undoes
          // first, in one fixed order: v1's writers then wait for the commit instead of one of
          // them being picked as a deadlock victim when a row lock here meets an ALTER TABLE's lock
          // upgrade. A v1 transaction held open longer than the timeout fails this attempt (retried).
          await c.query(`SET LOCAL lock_timeout = '10s'`);
          for (const t of ['sessions', 'templates', 'users'].filter((x) => have.tables[x]))
            await c.query(`LOCK TABLE ${quoteIdent(t)} IN ACCESS EXCLUSIVE MODE`);
          // Rows the migration rewrote go back to v1's version, unless v1 changed them since
          // (then v1's write stands); rows it inserted go away. A row v2 ran (agent_id set) is
          // v2's change, never v1's: it goes back too.
          if (have.tables.migration_originals) {
            for (const [t, key] of Object.entries(KEYS)) {
              const v1Cols = want.tables[t]?.map((x) => x.name);
              if (!v1Cols || !have.tables[t]) continue;
              const v2Ran =
                t === 'sessions' && sessionCols.includes('agent_id') && !want.tables.sessions.some((x) => x.name === 'agent_id')
                  ? ' OR x.agent_id IS NOT NULL'
                  : '';
              const same = `(m.written_fp = ${fingerprintSql(v1Cols)}${v2Ran})`;
              // A row v1 changed after the migration wrote it: v1's values stay in the columns v1
              // changed; the others (still as the migration wrote them) get the original back.
              const hasWritten = have.tables.migration_originals.some((x) => x.name === 'written');
              const lit = (col: string) => `'${col.replace(/'/g, "''")}'`;
              const set = v1Cols
                .map((col) =>
                  hasWritten
                    ? `${quoteIdent(col)} = CASE WHEN ${same} OR to_jsonb(x.${quoteIdent(col)}) IS NOT DISTINCT FROM (m.written -> ${lit(col)}) THEN o.${quoteIdent(col)} ELSE x.${quoteIdent(col)} END`
                    : `${quoteIdent(col)} = o.${quoteIdent(col)}`,
                )
                .join(', ');
              const reverted = await c.query(
                `UPDATE ${quoteIdent(t)} x SET ${set}
                   FROM migration_originals m, jsonb_populate_record(NULL::${quoteIdent(t)}, m.original) o
                  WHERE m.run_id = $1 AND m.tbl = $2 AND m.key = x.${quoteIdent(key)}::text AND m.original IS NOT NULL
                    AND (${same}${hasWritten ? ' OR m.written IS NOT NULL' : ''})`,
                [o.runId, t],
              );
              const removed = await c.query(
                `DELETE FROM ${quoteIdent(t)} x USING migration_originals m
                  WHERE m.run_id = $1 AND m.tbl = $2 AND m.key = x.${quoteIdent(key)}::text AND m.original IS NULL AND ${same}`,
                [o.runId, t],
              );
              done.push(`${t}: ${reverted.rowCount} rows put back, ${removed.rowCount} imported rows removed`);
            }
          }
          // v2's own sessions (exported before): they have a workflow and were never v1's.
          if (sessionCols.includes('workflow_id') && !want.tables.sessions?.some((x) => x.name === 'workflow_id')) {
            const originals = have.tables.migration_originals
              ? `AND NOT EXISTS (SELECT 1 FROM migration_originals m WHERE m.run_id = $1 AND m.tbl = 'sessions' AND m.key = x.id AND m.original IS NOT NULL)`
              : 'AND $1::text IS NOT NULL';
            const r = await c.query(`DELETE FROM sessions x WHERE x.workflow_id IS NOT NULL ${originals}`, [o.runId]);
            done.push(`${r.rowCount} v2 sessions removed`);
          }
          for (const v of have.views.filter((x) => !want.views.includes(x))) await c.query(`DROP VIEW IF EXISTS ${quoteIdent(v)} CASCADE`);
          for (const tr of have.triggers.filter((x) => !want.triggers.includes(x))) {
            const [t, name] = [tr.slice(0, tr.indexOf('.')), tr.slice(tr.indexOf('.') + 1)];
            await c.query(`DROP TRIGGER IF EXISTS ${quoteIdent(name)} ON ${quoteIdent(t)}`);
          }
          const extraTables = Object.keys(have.tables).filter((t) => !want.tables[t]);
          for (const t of extraTables) await c.query(`DROP TABLE IF EXISTS ${quoteIdent(t)} CASCADE`);
          const droppedCols: string[] = [];
          for (const [t, cols] of Object.entries(want.tables)) {
            const current = have.tables[t];
            if (!current) continue;
            for (const col of current.filter((x) => !cols.some((w) => w.name === x.name))) {
              await c.query(`ALTER TABLE ${quoteIdent(t)} DROP COLUMN IF EXISTS ${quoteIdent(col.name)} CASCADE`);
              droppedCols.push(`${t}.${col.name}`);
            }
            for (const w of cols) {
              const h = current.find((x) => x.name === w.name);
              if (!h) continue;
              if (h.default !== w.default)
                await c.query(
                  `ALTER TABLE ${quoteIdent(t)} ALTER COLUMN ${quoteIdent(w.name)} ${w.default === null ? 'DROP DEFAULT' : `SET DEFAULT ${w.default}`}`,
                );
              if (h.notNull !== w.notNull)
                await c.query(`ALTER TABLE ${quoteIdent(t)} ALTER COLUMN ${quoteIdent(w.name)} ${w.notNull ? 'SET' : 'DROP'} NOT NULL`);
            }
          }
          const now = await schemaSnapshot(c);
          for (const i of now.indexes.filter((x) => !want.indexes.includes(x))) {
            const con = await c.query(`SELECT conname, conrelid::regclass::text AS t FROM pg_constraint WHERE conindid = to_regclass($1)`, [quoteIdent(i)]);
            if (con.rowCount) await c.query(`ALTER TABLE ${con.rows[0].t} DROP CONSTRAINT IF EXISTS ${quoteIdent(con.rows[0].conname)}`);
            else await c.query(`DROP INDEX IF EXISTS ${quoteIdent(i)}`);
          }
          for (const f of have.functions.filter((x) => !want.functions.includes(x))) await c.query(`DROP FUNCTION IF EXISTS ${f}`);
          done.push(`dropped tables ${extraTables.join(', ') || '(none)'}; columns ${droppedCols.join(', ') || '(none)'}`);
          const diff = snapshotDiff(want, await schemaSnapshot(c));
          if (diff) throw ApplicationFailure.nonRetryable(`after undoing v2's changes the schema still differs from the backup: ${diff}`, 'UndoVerification');
          await c.query('COMMIT');
        } catch (err) {
          await c.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
        return done.join('; ');
      });
    },

    /** Last resort: restore the dump into a new database, verify it, then swap names (the current one is kept). */
    async restoreDatabase(o: MigrationOptions, manifest: BackupManifest): Promise<{ tables: Record<string, TableState>; keptAs: string }> {
      const dump = path.join(manifest.dir, 'database.dump');
      const expected = manifest.files.find((f) => f.file === 'database.dump')!;
      if ((await sha256(dump)) !== expected.sha256) throw ApplicationFailure.nonRetryable(`backup ${dump} does not match its checksum`, 'BackupCorrupt');
      const base = await v1DatabaseUrl(o);
      const live = decodeURIComponent(new URL(base).pathname.slice(1));
      const tag = createHash('sha256').update(o.runId).digest('hex').slice(0, 8);
      const fresh = `${live.slice(0, 40)}_rb_${tag}`;
      const kept = `${live.slice(0, 40)}_prerb_${tag}`;
      const urlOf = (db: string) => {
        const u = new URL(base);
        u.pathname = `/${encodeURIComponent(db)}`;
        return u.toString();
      };
      const admin = urlOf('postgres');
      const dbExists = (c: Client, db: string) => exists(c, 'SELECT 1 FROM pg_database WHERE datname = $1', [db]);
      const verify = async (db: string) => {
        const states = await withDb(urlOf(db), (c) => tableStates(c, Object.keys(manifest.tables)));
        const bad = Object.entries(manifest.tables).filter(([t, s]) => states[t]?.count !== s.count || states[t]?.checksum !== s.checksum);
        return { states, bad: bad.map(([t, s]) => `${t}: ${JSON.stringify(states[t] ?? null)} ≠ ${JSON.stringify(s)}`) };
      };

      const state = await withDb(admin, async (c) => ({ live: await dbExists(c, live), fresh: await dbExists(c, fresh), kept: await dbExists(c, kept) }));
      if (state.kept && state.live && !state.fresh) {
        // Swapped by an earlier attempt.
        const v = await verify(live);
        if (v.bad.length) throw ApplicationFailure.nonRetryable(`restored database differs from the backup: ${v.bad.join('; ')}`, 'RestoreVerification');
        return { tables: v.states, keptAs: kept };
      }
      let ready = false;
      if (state.fresh) ready = (await verify(fresh).catch(() => ({ bad: ['unreadable'] }))).bad.length === 0;
      if (!ready) {
        await withDb(admin, async (c) => {
          // Only our own, unverified copy is ever dropped; never the live database.
          await c.query(`DROP DATABASE IF EXISTS ${quoteIdent(fresh)} WITH (FORCE)`);
          await c.query(`CREATE DATABASE ${quoteIdent(fresh)}`);
        });
        const target = pgTarget(urlOf(fresh));
        await runProcess('pg_restore', ['--no-owner', '--no-privileges', '--exit-on-error', target.arg, '--', dump], 'pg_restore', target.env);
        const v = await verify(fresh);
        if (v.bad.length) throw ApplicationFailure.nonRetryable(`restore verification failed: ${v.bad.join('; ')}`, 'RestoreVerification');
      }
      await withDb(admin, async (c) => {
        if (state.live && !state.kept) {
          await c.query(`ALTER DATABASE ${quoteIdent(live)} WITH ALLOW_CONNECTIONS false`);
          for (let i = 0; ; i++) {
            await c.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [live]);
            try {
              await c.query(`ALTER DATABASE ${quoteIdent(live)} RENAME TO ${quoteIdent(kept)}`);
              break;
            } catch (err) {
              if (i > 50) throw err;
              await new Promise((r) => setTimeout(r, 100));
            }
          }
          await c.query(`ALTER DATABASE ${quoteIdent(kept)} WITH ALLOW_CONNECTIONS true`);
        }
        await c.query(`ALTER DATABASE ${quoteIdent(fresh)} RENAME TO ${quoteIdent(live)}`);
      });
      const v = await verify(live);
      if (v.bad.length) throw ApplicationFailure.nonRetryable(`restored database differs from the backup: ${v.bad.join('; ')}`, 'RestoreVerification');
      return { tables: v.states, keptAs: kept };
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
        beat({ step: `restore ${plural}` });
        await kube.restoreCrd(def, objects);
        restored += objects.length;
      }
      return restored;
    },

    /** Replica counts as the backup manifest recorded them. */
    async restoreReplicas(o: MigrationOptions, manifest: BackupManifest, refs: string[]): Promise<Record<string, number>> {
      const kube = new Kube(o.v1.kubeconfig);
      const out: Record<string, number> = {};
      for (const ref of refs) {
        const n = manifest.deployments[ref];
        if (n === null || n === undefined) continue;
        await kube.scale(ref, n);
        out[ref] = n;
      }
      return out;
    },
  });
}
