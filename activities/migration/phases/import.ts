/**
 * Phase 5, import: v1 Template and Session CRDs and v1 session rows become v2 records, one page
 * per activity, in O(n) overall: CRDs are listed with Kubernetes `limit`/`continue`, rows with
 * keyset pagination by id; the workflow carries only a small cursor. Every row gets a result in
 * migration_import_results (imported, or failed with the reason; duplicates across namespaces:
 * the first namespace wins).
 *
 * Before the migration writes a v1 row it keeps the row as v1 had it (migration_originals), and
 * after writing it the row's fingerprint over v1's own columns: a rollback puts back the rows v1
 * did not change since, and the cut-over's delta imports find the rows v1 changed since.
 *
 * Delta mode (the cut-over): only the sessions of the users a routing change moves from v1 to
 * v2, re-imported if v1 changed them since their import, then adopted (their session workflow
 * starts: from then on v2 manages them).
 */
import { adoptSessions } from '../../session-adoption';
import { convertSession, convertTemplate } from '../convert';
import { Kube, V1Object } from '../kube';
import { moves, RouteSet } from '../routing-state';
import { ImportError, ownerId, saveImportedSession } from '../store';
import { beat, fingerprintSql, MigrationActivityDeps, pause, quoteIdent, redacting, v1DatabaseUrl, withDb } from '../common';
import type { Client } from 'pg';
import type { ImportFailure, MigrationOptions } from '../../../workflows/migration-api';

export interface ImportScope {
  mode: 'all' | 'delta';
  /** Delta: the routing before and after the change; the users it moves are imported. */
  before?: RouteSet;
  after?: RouteSet;
  /** Start the session workflows of the imported sessions (delta imports adopt). */
  adopt: boolean;
}

/** Where the import stands: templates CRDs, then session CRDs, then rows without a CRD. */
export interface ImportCursor {
  pass: 'templates' | 'crds' | 'rows';
  /** Index into o.v1.namespaces (CRD passes). */
  ns: number;
  /** Kubernetes continue token. */
  cont?: string;
  /** Rows pass: the last id done (keyset). */
  after?: string;
}

/** v1's own columns per table (from the backup's schema snapshot). */
export type V1Columns = Record<string, string[]>;

export interface ImportPageResult {
  next: ImportCursor | null;
  processed: number;
  imported: number;
  unchanged: number;
  failed: number;
  adopted: number;
  /** First failures of the page (all of them are in migration_import_results). */
  failures: ImportFailure[];
}

const MAX_FAILURES_PER_PAGE = 50;

export const FIRST_CURSOR = (scope: ImportScope): ImportCursor => ({ pass: scope.mode === 'all' ? 'templates' : 'crds', ns: 0 });

/** Tables of the migration's own bookkeeping (dropped again by a rollback). */
async function ensureTables(c: Client): Promise<void> {
  await c.query(`CREATE TABLE IF NOT EXISTS migration_import_results (
    run_id VARCHAR(255) NOT NULL, kind VARCHAR(20) NOT NULL, source_id VARCHAR(255) NOT NULL,
    namespace VARCHAR(255) NOT NULL DEFAULT '', status VARCHAR(20) NOT NULL, reason TEXT,
    imported_at TIMESTAMP DEFAULT NOW(), PRIMARY KEY (run_id, kind, source_id, namespace))`);
  await c.query(`ALTER TABLE migration_import_results ADD COLUMN IF NOT EXISTS via VARCHAR(10)`);
  await c.query(`ALTER TABLE migration_import_results ADD COLUMN IF NOT EXISTS source_version VARCHAR(64)`);
  await c.query(`CREATE TABLE IF NOT EXISTS migration_originals (
    run_id VARCHAR(255) NOT NULL, tbl VARCHAR(63) NOT NULL, key TEXT NOT NULL,
    original JSONB, written_fp TEXT, PRIMARY KEY (run_id, tbl, key))`);
  // The row as the migration wrote it: once v1 changes a row after that, a rollback keeps v1's
  // values only in the columns v1 changed, and puts back the original in the others.
  await c.query(`ALTER TABLE migration_originals ADD COLUMN IF NOT EXISTS written JSONB`);
}

/**
 * The original row to keep, column by column (jsonb): where the row still has what the migration
 * wrote, the original value; where v1 changed it since, v1's value. `cur` is to_jsonb(x).
 */
export function mergedOriginalSql(cur: string, m = 'm'): string {
  return `(SELECT jsonb_object_agg(k.key, CASE WHEN (${cur} -> k.key) IS NOT DISTINCT FROM (${m}.written -> k.key) THEN ${m}.original -> k.key ELSE ${cur} -> k.key END)
             FROM jsonb_object_keys(${cur}) k(key))`;
}

/** Keeps rows as v1 had them, before the migration writes them (or as v1 last changed them). */
async function captureOriginals(c: Client, runId: string, table: string, keyCol: string, keys: string[], v1Cols: string[]): Promise<void> {
  if (!keys.length) return;
  const t = quoteIdent(table);
  const k = quoteIdent(keyCol);
  await c.query(
    `INSERT INTO migration_originals (run_id, tbl, key, original)
     SELECT $1, $2, keys.k, to_jsonb(x) FROM unnest($3::text[]) AS keys(k) LEFT JOIN ${t} x ON x.${k}::text = keys.k
     ON CONFLICT (run_id, tbl, key) DO NOTHING`,
    [runId, table, keys],
  );
  // A row v1 changed after the migration wrote it: v1's changes are v1's truth now (column by
  // column: the columns v1 left alone still hold what the migration wrote, not v1's values).
  await c.query(
    `UPDATE migration_originals m
        SET original = CASE WHEN m.original IS NULL OR m.written IS NULL THEN to_jsonb(x) ELSE ${mergedOriginalSql('to_jsonb(x)')} END
       FROM ${t} x
      WHERE m.run_id = $1 AND m.tbl = $2 AND m.key = x.${k}::text AND x.${k}::text = ANY($3::text[])
        AND m.written_fp IS NOT NULL AND m.written_fp <> ${fingerprintSql(v1Cols)}`,
    [runId, table, keys],
  );
}

async function recordWritten(c: Client, runId: string, table: string, keyCol: string, keys: string[], v1Cols: string[]): Promise<void> {
  if (!keys.length) return;
  await c.query(
    `UPDATE migration_originals m SET written_fp = ${fingerprintSql(v1Cols)}, written = to_jsonb(x) FROM ${quoteIdent(table)} x
      WHERE m.run_id = $1 AND m.tbl = $2 AND m.key = x.${quoteIdent(keyCol)}::text AND x.${quoteIdent(keyCol)}::text = ANY($3::text[])`,
    [runId, table, keys],
  );
}

/**
 * An import page's transaction. v1 is serving from the same rows (blue-green): the migration
 * yields. If the page waits on a row lock for long (v1 writing the same session, or a lock cycle
 * with v1's upsert), the page fails and its activity retries it, instead of PostgreSQL picking
 * v1's statement as the deadlock victim.
 */
async function begin(c: Client): Promise<void> {
  await c.query('BEGIN');
  await c.query(`SET LOCAL lock_timeout = '300ms'`);
}

interface ResultRow {
  kind: 'session' | 'template';
  id: string;
  namespace: string;
  /** validated: the full pass checked it (nothing written); imported: taken over at its user's cut-over. */
  status: 'imported' | 'validated' | 'failed';
  reason: string | null;
  via: 'crd' | 'row';
  version: string | null;
}

async function recordResults(c: Client, runId: string, rows: ResultRow[]): Promise<void> {
  if (!rows.length) return;
  await c.query(
    `INSERT INTO migration_import_results (run_id, kind, source_id, namespace, status, reason, via, source_version)
     SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])
     ON CONFLICT (run_id, kind, source_id, namespace) DO UPDATE
       SET status = EXCLUDED.status, reason = EXCLUDED.reason, via = EXCLUDED.via, source_version = EXCLUDED.source_version, imported_at = NOW()`,
    [
      runId,
      rows.map((r) => r.kind),
      rows.map((r) => r.id),
      rows.map((r) => r.namespace),
      rows.map((r) => r.status),
      rows.map((r) => r.reason),
      rows.map((r) => r.via),
      rows.map((r) => r.version),
    ],
  );
}

async function knownTemplates(c: Client): Promise<Set<string>> {
  const catalog = (await c.query(`SELECT to_regclass('template_catalog') AS r`)).rows[0].r;
  const r = await c.query(catalog ? 'SELECT name FROM templates UNION SELECT name FROM template_catalog' : 'SELECT name FROM templates');
  return new Set(r.rows.map((x) => x.name as string));
}

/** user_id (a users.id or, on older installs, a username) → username. */
async function usernames(c: Client, userIds: string[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (!userIds.length) return out;
  const r = await c.query(`SELECT id::text AS id, username FROM users WHERE id::text = ANY($1::text[]) OR username = ANY($1::text[])`, [userIds]);
  for (const u of r.rows) {
    out.set(u.id, u.username);
    out.set(u.username, u.username);
  }
  return out;
}

export function importActivities(deps: MigrationActivityDeps) {
  /**
   * Converts sessions and records per-row results. The full pass (`write` false) only checks them:
   * v1 keeps serving its users from these rows until they move, so nothing of v1's is rewritten
   * before then. A delta import at a user's cut-over (`write` true) takes the rows over (one
   * transaction, originals recorded for a rollback) and returns the ids written.
   */
  async function save(
    c: Client,
    o: MigrationOptions,
    v1Cols: V1Columns,
    items: Array<{ id: string; src: { crd?: V1Object; row?: Record<string, unknown> }; namespace: string; via: 'crd' | 'row'; version: string | null }>,
    templates: Set<string>,
    res: ImportPageResult,
    results: ResultRow[],
    write: boolean,
  ): Promise<string[]> {
    const converted = items.map((it) => ({ it, conv: convertSession(it.src, templates) }));
    const ok = converted.filter((x) => x.conv.ok);
    const ids = ok.map((x) => x.it.id);
    const skipped = new Set<string>();
    if (write && v1Cols.sessions) await captureOriginals(c, o.runId, 'sessions', 'id', ids, v1Cols.sessions);
    for (const { it, conv } of converted) {
      if (!conv.ok) {
        res.failed++;
        if (res.failures.length < MAX_FAILURES_PER_PAGE) res.failures.push({ kind: 'session', id: it.id, namespace: it.namespace, reason: conv.reason });
        results.push({ kind: 'session', id: it.id, namespace: it.namespace, status: 'failed', reason: conv.reason, via: it.via, version: it.version });
        continue;
      }
      try {
        if (write) await saveImportedSession(c, conv.record, { onConflict: 'update', runId: o.runId });
        else await ownerId(c, conv.record.owner);
      } catch (err) {
        // Thrown before any write (the owner lookup): the page's transaction is intact.
        if (!(err instanceof ImportError)) throw err;
        skipped.add(it.id);
        res.failed++;
        if (res.failures.length < MAX_FAILURES_PER_PAGE) res.failures.push({ kind: 'session', id: it.id, namespace: it.namespace, reason: err.message });
        results.push({ kind: 'session', id: it.id, namespace: it.namespace, status: 'failed', reason: err.message, via: it.via, version: it.version });
        continue;
      }
      res.imported++;
      results.push({
        kind: 'session',
        id: it.id,
        namespace: it.namespace,
        status: write ? 'imported' : 'validated',
        reason: null,
        via: it.via,
        version: it.version,
      });
    }
    if (!write) return [];
    const written = ids.filter((id) => !skipped.has(id));
    if (v1Cols.sessions) await recordWritten(c, o.runId, 'sessions', 'id', written, v1Cols.sessions);
    return written;
  }

  async function adopt(ids: string[], res: ImportPageResult, scope: ImportScope): Promise<void> {
    if (!scope.adopt || !deps.adoption || !ids.length) return;
    const r = await adoptSessions(deps.adoption, ids);
    res.adopted += r.adopted;
    for (const f of r.failures) {
      res.failed++;
      if (res.failures.length < MAX_FAILURES_PER_PAGE) res.failures.push({ kind: 'adoption', id: f.id, namespace: null, reason: f.reason });
    }
  }

  async function templatesPage(o: MigrationOptions, v1Cols: V1Columns, cur: ImportCursor, res: ImportPageResult): Promise<ImportCursor> {
    const kube = new Kube(o.v1.kubeconfig);
    const page = await kube.listV1Page('templates', o.v1.namespaces[cur.ns], o.importBatchSize, cur.cont);
    await withDb(await v1DatabaseUrl(o), async (c) => {
      await begin(c);
      const results: ResultRow[] = [];
      const names = page.items.map((x) => String(x.metadata?.name ?? '?'));
      const hasTemplatesOriginals = !!v1Cols.templates;
      if (hasTemplatesOriginals) await captureOriginals(c, o.runId, 'templates', 'name', names, v1Cols.templates);
      for (const crd of page.items) {
        const t = convertTemplate(crd);
        const id = String(crd.metadata?.name ?? '?');
        const ns = String(crd.metadata?.namespace ?? '');
        if (t.ok) {
          await c.query(
            `INSERT INTO templates (name, display_name, description, category, icon, manifest) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET manifest = EXCLUDED.manifest, display_name = EXCLUDED.display_name, updated_at = NOW()`,
            [t.name, t.manifest.displayName, t.manifest.description ?? null, t.manifest.category ?? null, t.manifest.icon ?? null, t.manifest],
          );
        } else {
          res.failed++;
          res.failures.push({ kind: 'template', id, namespace: ns, reason: t.reason });
        }
        results.push({ kind: 'template', id, namespace: ns, status: t.ok ? 'imported' : 'failed', reason: t.ok ? null : t.reason, via: 'crd', version: null });
      }
      if (hasTemplatesOriginals) await recordWritten(c, o.runId, 'templates', 'name', names, v1Cols.templates);
      await recordResults(c, o.runId, results);
      await c.query('COMMIT');
    });
    return advanceNs(o, cur, page.continue, 'templates');
  }

  async function crdsPage(o: MigrationOptions, scope: ImportScope, v1Cols: V1Columns, cur: ImportCursor, res: ImportPageResult): Promise<ImportCursor | null> {
    const kube = new Kube(o.v1.kubeconfig);
    const ns = o.v1.namespaces[cur.ns];
    const page = await kube.listV1Page('sessions', ns, o.importBatchSize, cur.cont);
    if (page.expired) return { ...cur, cont: undefined }; // restart the namespace (idempotent)
    const crds = page.items;
    const ids = crds.map((x) => String(x.metadata?.name ?? ''));
    const toAdopt = await withDb(await v1DatabaseUrl(o), async (c) => {
      const fp = v1Cols.sessions ? fingerprintSql(v1Cols.sessions) : `''`;
      const rows = new Map((await c.query(`SELECT x.*, ${fp} AS __fp FROM sessions x WHERE x.id = ANY($1::text[])`, [ids])).rows.map((r) => [String(r.id), r]));
      const prior = (
        await c.query(
          `SELECT source_id, namespace, status, source_version FROM migration_import_results WHERE run_id = $1 AND kind = 'session' AND source_id = ANY($2::text[])`,
          [o.runId, ids],
        )
      ).rows as Array<{ source_id: string; namespace: string; status: string; source_version: string | null }>;
      const written = new Map(
        (
          await c.query(`SELECT key, written_fp FROM migration_originals WHERE run_id = $1 AND tbl = 'sessions' AND key = ANY($2::text[])`, [o.runId, ids])
        ).rows.map((r) => [r.key as string, r.written_fp as string | null]),
      );
      const names =
        scope.mode === 'delta'
          ? await usernames(
              c,
              crds.map((x) => String((x.spec as Record<string, unknown>)?.user ?? '')),
            )
          : new Map();
      const templates = await knownTemplates(c);
      const items: Parameters<typeof save>[3] = [];
      const results: ResultRow[] = [];
      const adoptIds: string[] = [];
      for (const crd of crds) {
        const id = String(crd.metadata?.name ?? '');
        const earlier = prior.find((p) => p.source_id === id && o.v1.namespaces.indexOf(p.namespace) >= 0 && o.v1.namespaces.indexOf(p.namespace) < cur.ns);
        if (earlier) {
          const reason = `duplicate id: also in namespace ${earlier.namespace}; imported from there`;
          if (scope.mode === 'all') {
            res.failed++;
            if (res.failures.length < MAX_FAILURES_PER_PAGE) res.failures.push({ kind: 'session', id, namespace: ns, reason });
            results.push({ kind: 'session', id, namespace: ns, status: 'failed', reason, via: 'crd', version: crd.metadata?.resourceVersion as string });
          }
          continue;
        }
        const row = rows.get(id);
        if (scope.mode === 'delta') {
          const user = String((crd.spec as Record<string, unknown>)?.user ?? '');
          if (!moves(scope.before!, scope.after!, names.get(user) ?? user)) continue;
          res.processed++;
          const mine = prior.find((p) => p.source_id === id && p.namespace === ns);
          const changed =
            !mine ||
            mine.status !== 'imported' ||
            mine.source_version !== (crd.metadata?.resourceVersion ?? null) ||
            (row && written.get(id) !== row.__fp) ||
            (!row && written.has(id));
          if (mine?.status === 'imported') adoptIds.push(id);
          if (!changed) {
            res.unchanged++;
            continue;
          }
        } else res.processed++;
        if (row) delete row.__fp;
        items.push({ id, src: { crd, ...(row ? { row } : {}) }, namespace: ns, via: 'crd', version: (crd.metadata?.resourceVersion as string) ?? null });
      }
      await begin(c);
      const saved = await save(c, o, v1Cols, items, templates, res, results, scope.mode === 'delta');
      await recordResults(c, o.runId, results);
      await c.query('COMMIT');
      return [...new Set([...adoptIds, ...saved])];
    });
    await adopt(toAdopt, res, scope);
    return advanceNs(o, cur, page.continue, 'crds');
  }

  async function rowsPage(o: MigrationOptions, scope: ImportScope, v1Cols: V1Columns, cur: ImportCursor, res: ImportPageResult): Promise<ImportCursor | null> {
    const { next, toAdopt } = await withDb(await v1DatabaseUrl(o), async (c) => {
      const fp = v1Cols.sessions ? fingerprintSql(v1Cols.sessions) : `''`;
      const hasWorkflowId = (
        await c.query(
          `SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'sessions' AND column_name = 'workflow_id'`,
        )
      ).rowCount;
      // v1 rows without a CRD (those with one were done by the CRD pass); never v2's own sessions.
      const r = await c.query(
        `SELECT x.*, ${fp} AS __fp, m.written_fp AS __written, res.status AS __status
           FROM sessions x
           LEFT JOIN migration_originals m ON m.run_id = $1 AND m.tbl = 'sessions' AND m.key = x.id
           LEFT JOIN migration_import_results res ON res.run_id = $1 AND res.kind = 'session' AND res.source_id = x.id AND res.via = 'row'
          WHERE x.id > $2
            AND NOT EXISTS (SELECT 1 FROM migration_import_results c WHERE c.run_id = $1 AND c.kind = 'session' AND c.source_id = x.id AND c.via = 'crd')
            AND COALESCE(x.platform_metadata->>'source', 'v1.x') = 'v1.x'
            ${hasWorkflowId ? 'AND (x.workflow_id IS NULL OR m.key IS NOT NULL)' : ''}
          ORDER BY x.id LIMIT $3`,
        [o.runId, cur.after ?? '', o.importBatchSize],
      );
      const names =
        scope.mode === 'delta'
          ? await usernames(
              c,
              r.rows.map((x) => String(x.user_id ?? '')),
            )
          : new Map();
      const templates = await knownTemplates(c);
      const items: Parameters<typeof save>[3] = [];
      const results: ResultRow[] = [];
      const adoptIds: string[] = [];
      for (const row of r.rows) {
        const id = String(row.id);
        const { __fp: rowFp, __written: written, __status: status } = row;
        delete row.__fp;
        delete row.__written;
        delete row.__status;
        if (scope.mode === 'delta') {
          const user = String(row.user_id ?? '');
          if (!moves(scope.before!, scope.after!, names.get(user) ?? user)) continue;
          res.processed++;
          if (status === 'imported') adoptIds.push(id);
          if (status === 'imported' && written === rowFp) {
            res.unchanged++;
            continue;
          }
        } else res.processed++;
        items.push({ id, src: { row }, namespace: String(row.namespace ?? ''), via: 'row', version: null });
      }
      await begin(c);
      const saved = await save(c, o, v1Cols, items, templates, res, results, scope.mode === 'delta');
      await recordResults(c, o.runId, results);
      await c.query('COMMIT');
      const last = r.rows.length ? String(r.rows[r.rows.length - 1].id) : null;
      return {
        next: r.rows.length < o.importBatchSize || !last ? null : { pass: 'rows' as const, ns: 0, after: last },
        toAdopt: [...new Set([...adoptIds, ...saved])],
      };
    });
    await adopt(toAdopt, res, scope);
    return next;
  }

  return redacting({
    /** Creates the bookkeeping tables and counts the v1 sessions to import (ids never leave the activity). */
    async prepareImport(o: MigrationOptions): Promise<{ total: number }> {
      await withDb(await v1DatabaseUrl(o), ensureTables);
      const ids = new Set<string>();
      const kube = new Kube(o.v1.kubeconfig);
      for await (const page of kube.eachV1('sessions', o.v1.namespaces)) {
        for (const x of page) ids.add(String(x.metadata?.name));
        beat({ counted: ids.size });
      }
      await withDb(await v1DatabaseUrl(o), async (c) => {
        let after = '';
        for (;;) {
          const r = await c.query(`SELECT id FROM sessions WHERE id > $1 AND COALESCE(platform_metadata->>'source', 'v1.x') = 'v1.x' ORDER BY id LIMIT 5000`, [
            after,
          ]);
          for (const x of r.rows) ids.add(String(x.id));
          if (r.rows.length < 5000) break;
          after = String(r.rows[r.rows.length - 1].id);
          beat({ counted: ids.size });
        }
      });
      return { total: ids.size };
    },

    /** One page of the import (or of a delta import); returns the cursor of the next page, or null. */
    async importPage(o: MigrationOptions, scope: ImportScope, v1Cols: V1Columns, cursor: ImportCursor): Promise<ImportPageResult> {
      const res: ImportPageResult = { next: null, processed: 0, imported: 0, unchanged: 0, failed: 0, adopted: 0, failures: [] };
      beat({ cursor });
      if (cursor.pass === 'templates') res.next = await templatesPage(o, v1Cols, cursor, res);
      else if (cursor.pass === 'crds') res.next = await crdsPage(o, scope, v1Cols, cursor, res);
      else res.next = await rowsPage(o, scope, v1Cols, cursor, res);
      // The pace between pages (to spare a busy v1 database), here rather than as a workflow
      // timer (about a second of latency each); a cancellation ends it at once.
      if (res.next && o.importPaceMs > 0) await pause(o.importPaceMs, { cursor: res.next });
      return res;
    },
  });
}

/** Next page of a CRD pass: same namespace with the continue token, next namespace, or the next pass. */
function advanceNs(o: MigrationOptions, cur: ImportCursor, cont: string | undefined, pass: 'templates' | 'crds'): ImportCursor {
  if (cont) return { pass, ns: cur.ns, cont };
  if (cur.ns + 1 < o.v1.namespaces.length) return { pass, ns: cur.ns + 1 };
  return pass === 'templates' ? { pass: 'crds', ns: 0 } : { pass: 'rows', ns: 0 };
}
