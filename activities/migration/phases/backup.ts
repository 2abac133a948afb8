/**
 * Phase 2, backup: pg_dump from an exported snapshot, with the table checksums and the schema
 * snapshot taken in that same snapshot (so they describe exactly what the dump holds), verified
 * with pg_restore --list; v1 CRDs (paged), Deployments with their replica counts, the Secret; a
 * sha256 manifest. A retried or resumed backup reuses its own verified files.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Kube, V1Object } from '../kube';
import {
  beat,
  listTables,
  pgTarget,
  redacting,
  runDir,
  runProcess,
  schemaSnapshot,
  SchemaSnapshot,
  sha256,
  tableStates,
  TableState,
  v1DatabaseUrl,
  withDb,
} from '../common';
import type { MigrationOptions } from '../../../workflows/migration-api';

/**
 * The migration's own records (left by an earlier run on this database): not v1's data, so not
 * in the manifest's checksums (a rollback verifies v1's tables against those).
 */
const MIGRATION_BOOKKEEPING = ['migration_import_results', 'migration_originals'];

export interface BackupManifest {
  dir: string;
  createdAt: string;
  /** The snapshot id pg_dump ran with (the checksums below are from the same snapshot). */
  snapshot: string;
  files: Array<{ file: string; sha256: string; bytes: number }>;
  /** Every table of the dump: count and checksum. */
  tables: Record<string, TableState>;
  /** The schema v1 had: what a rollback brings back. */
  schema: SchemaSnapshot;
  /** Replicas of v1 and v2 Deployments at backup time (null: absent): what a rollback restores. */
  deployments: Record<string, number | null>;
}

export const MANIFEST = 'manifest.json';

export async function readManifest(dir: string): Promise<BackupManifest | null> {
  const file = path.join(dir, MANIFEST);
  if (!existsSync(file)) return null;
  return JSON.parse(await readFile(file, 'utf8')) as BackupManifest;
}

export function backupActivities() {
  return redacting({
    async backup(o: MigrationOptions): Promise<BackupManifest> {
      const dir = runDir(o);
      const previous = await readManifest(dir);
      if (previous) {
        const intact = await Promise.all(
          previous.files.map(async (f) => existsSync(path.join(dir, f.file)) && (await sha256(path.join(dir, f.file))) === f.sha256),
        );
        if (intact.every(Boolean)) return previous; // a resumed run reuses its own, verified backup
      }
      await mkdir(dir, { recursive: true });
      const dump = path.join(dir, 'database.dump');

      // One REPEATABLE READ transaction exports its snapshot; pg_dump reads that snapshot while the
      // same transaction computes the checksums: both see the database at the same instant.
      const url = await v1DatabaseUrl(o);
      const target = pgTarget(url);
      const { snapshot, tables, schema } = await withDb(url, async (c) => {
        await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
        try {
          const id = (await c.query('SELECT pg_export_snapshot() AS s')).rows[0].s as string;
          const [, states, schema] = await Promise.all([
            runProcess('pg_dump', ['--format=custom', `--snapshot=${id}`, `--file=${dump}.partial`, target.arg], 'pg_dump', target.env),
            listTables(c).then((t) =>
              tableStates(
                c,
                t.filter((x) => !MIGRATION_BOOKKEEPING.includes(x)),
              ),
            ),
            schemaSnapshot(c),
          ]);
          return { snapshot: id, tables: states, schema };
        } finally {
          await c.query('COMMIT').catch(() => undefined);
        }
      });
      await rename(`${dump}.partial`, dump);
      const list = await runProcess('pg_restore', ['--list', '--', dump], 'pg_restore --list');
      if (!/TABLE DATA .*sessions/.test(list.stdout)) throw new Error('pg_restore --list shows no sessions data: the dump is not usable');

      beat({ step: 'kubernetes objects' });
      const kube = new Kube(o.v1.kubeconfig);
      const json = async (file: string, data: unknown) => writeFile(path.join(dir, file), JSON.stringify(data));
      const all = async (plural: 'sessions' | 'templates') => {
        const items: V1Object[] = [];
        for await (const page of kube.eachV1(plural, o.v1.namespaces)) {
          items.push(...page);
          beat({ step: `${plural} CRDs`, n: items.length });
        }
        return items;
      };
      await json('sessions-crds.json', { items: await all('sessions') });
      await json('templates-crds.json', { items: await all('templates') });
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
      await json('secrets.json', { items: [await kube.readSecret(o.v1.namespaces[0], 'streamspace-secrets')].filter(Boolean) });
      const files = [];
      for (const file of ['database.dump', 'sessions-crds.json', 'templates-crds.json', 'crd-definitions.json', 'deployments.json', 'secrets.json']) {
        const p = path.join(dir, file);
        files.push({ file, sha256: await sha256(p), bytes: (await stat(p)).size });
      }
      const manifest: BackupManifest = { dir, createdAt: new Date().toISOString(), snapshot, files, tables, schema, deployments };
      await writeFile(path.join(dir, `${MANIFEST}.partial`), JSON.stringify(manifest, null, 2));
      await rename(path.join(dir, `${MANIFEST}.partial`), path.join(dir, MANIFEST));
      return manifest;
    },
  });
}
