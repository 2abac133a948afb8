/**
 * The migration at scale: 10,000 v1 sessions (Session CRDs on a real kube-apiserver and rows in
 * a v1 PostgreSQL database) migrated by the real workflow (blue-green, straight to the full
 * switch, short decommission timer). Prints the import rate and the whole run's time.
 *
 * Baseline measured in the same run: the old engine re-listed every CRD and row for each batch
 * (O(n²)); one full listing is timed here and multiplied by the number of batches the old engine
 * made (n / 10 in the rehearsal, n / 50 by default). The spec's manual runbook (4 h – 5 days) is
 * the reference line.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Client } from 'pg';
import { Kube } from '../activities/migration/kube';
import { TEST_ENV } from '../test/harness/env';
import { startKube } from '../test/harness/kube';
import { createV1Cluster, createV1Database, startFakeV1Api } from '../test/harness/v1-fixture';
import { log, Metric, ms, now, REPO_ROOT, sleep, withStack } from './common';

const NAME = 'migration';
const N = Number(process.env.BENCH_MIGRATION_SESSIONS ?? 10_000);
const PAGE = 500;

export async function migrationBench(): Promise<Metric[]> {
  const cluster = await startKube();
  const fakeV1 = await startFakeV1Api();
  const t0 = now();
  const v1 = await createV1Database(TEST_ENV.pgAdminUrl, { name: `v1_bench_${Date.now().toString(36)}`, statusColumn: true, sessions: N });
  await createV1Cluster(cluster.kubeconfig(), { sessions: v1.sessions });
  log(NAME, `fixture: ${N} v1 sessions (rows + Session CRDs) in ${(ms(t0) / 1000).toFixed(1)} s`);
  try {
    // Secrets by reference (the API refuses a password in a request): the worker reads v1's
    // password from its own environment, and v2's database is its own DATABASE_URL.
    const v1Password = decodeURIComponent(new URL(v1.url).password);
    const v1UrlNoPassword = (() => {
      const u = new URL(v1.url);
      u.password = '';
      return u.toString();
    })();
    return await withStack(`bench-${NAME}`, { REDIS_URL: TEST_ENV.redisUrl, V1_DATABASE_PASSWORD: v1Password }, async (stack) => {
      const kubeconfig = path.join(stack.logDir, 'admin-kubeconfig.yaml');
      writeFileSync(kubeconfig, cluster.kubeconfig());
      const backupDir = path.join(REPO_ROOT, 'test-artifacts', 'migration-backups', `bench-${stack.id}`);
      mkdirSync(backupDir, { recursive: true });

      // Baseline: one full listing of CRDs and rows, as the old engine did for every batch.
      const tl = now();
      const kube = new Kube(kubeconfig);
      const crds = await kube.listV1('sessions', ['streamspace', 'workspaces']);
      const c = new Client({ connectionString: v1.url });
      await c.connect();
      const rows = (await c.query('SELECT * FROM sessions ORDER BY id')).rows.length;
      await c.end();
      const listMs = ms(tl);
      log(NAME, `one full listing (${crds.length} CRDs + ${rows} rows): ${listMs.toFixed(0)} ms`);

      const admin = await stack.login();
      const runId = `bench-${Date.now().toString(36)}`;
      const tr = now();
      const r = await stack.call(
        'POST',
        '/api/v1/migrations',
        {
          runId,
          strategy: 'blue-green',
          v1: {
            apiUrl: fakeV1.url,
            databaseUrl: v1UrlNoPassword,
            databasePasswordRef: 'env:V1_DATABASE_PASSWORD',
            kubeconfig,
            namespaces: ['streamspace', 'workspaces'],
            deployments: ['streamspace/streamspace-api'],
          },
          v2: { readyUrl: `${stack.url}/ready`, databaseUrlRef: 'env:DATABASE_URL', deployments: [], platforms: [] },
          backupDir,
          cohorts: [],
          approval: { mode: 'manual' },
          importBatchSize: PAGE,
          importPaceMs: 0,
          decommissionAfter: '1s',
          agentWaitTimeout: '1m',
        },
        admin,
      );
      if (r.status !== 201) throw new Error(`start: ${r.status} ${JSON.stringify(r.body)}`);
      let p: any;
      for (;;) {
        p = (await stack.call('GET', `/api/v1/migrations/${runId}`, undefined, admin)).body;
        if (p.status === 'completed') break;
        if (p.status === 'blocked' || p.status === 'rolled-back') throw new Error(`run ${p.status}: ${p.blockedReason}`);
        await sleep(250);
      }
      const runMs = ms(tr);
      const ph = (n: string) => p.phases.find((x: any) => x.name === n);
      const span = (n: string) => Date.parse(ph(n).endedAt) - Date.parse(ph(n).startedAt);
      const importMs = span('import');
      const rate = p.import.processed / (importMs / 1000);
      const cut = span('cutover');
      log(
        NAME,
        `import: ${p.import.processed}/${p.import.total} sessions in ${(importMs / 1000).toFixed(1)} s = ${rate.toFixed(0)} sessions/s (${p.import.failed} not imported)`,
      );
      log(
        NAME,
        `backup ${(span('backup') / 1000).toFixed(1)} s, schema ${(span('schema') / 1000).toFixed(1)} s, cut-over with delta import ${(cut / 1000).toFixed(1)} s`,
      );
      log(NAME, `whole run (preflight → decommissioned): ${(runMs / 1000).toFixed(1)} s`);
      const oldBatches50 = Math.ceil(N / 50);
      const baseline50 = (oldBatches50 * listMs) / 1000;
      log(NAME, `old engine (re-list per batch of 50): ≥ ${oldBatches50} × ${listMs.toFixed(0)} ms = ${baseline50.toFixed(0)} s of listing alone`);
      return [
        {
          metric: `migration import, ${N} v1 sessions (CRDs + rows)`,
          ours: `${rate.toFixed(0)} sessions/s (${(importMs / 1000).toFixed(1)} s, pages of ${PAGE})`,
          target: 'O(n); rate reported',
          peer: `old per-batch re-listing: ≥ ${baseline50.toFixed(0)} s listing alone (${oldBatches50} × ${listMs.toFixed(0)} ms, measured)`,
        },
        {
          metric: `migration whole run, ${N} sessions`,
          ours: `${(runMs / 1000).toFixed(1)} s (preflight → decommission)`,
          target: '—',
          peer: "spec's manual runbook: 4 h – 5 days",
        },
      ];
    });
  } finally {
    await fakeV1.close();
    await v1.drop().catch(() => undefined);
    await cluster.stop();
  }
}
