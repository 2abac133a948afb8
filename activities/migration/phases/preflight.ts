/** Phase 1, preflight: read-only checks and the counts for the plan. Writes nothing anywhere. */
import { constants } from 'node:fs';
import { access, stat } from 'node:fs/promises';
import path from 'node:path';
import { Kube } from '../kube';
import { MigrationActivityDeps, redacting, runDir, runProcess, v1DatabaseUrl, withDb, withRedis } from '../common';
import { redactSecrets } from '../../../workflows/migration-api';
import type { MigrationOptions } from '../../../workflows/migration-api';

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

/** The nearest existing ancestor of dir must be a writable directory (checked without writing). */
async function writableWithoutWriting(dir: string): Promise<string> {
  let d = path.resolve(dir);
  for (;;) {
    try {
      const s = await stat(d);
      if (!s.isDirectory()) throw new Error(`${d} is not a directory`);
      await access(d, constants.W_OK | constants.X_OK);
      return d === path.resolve(dir) ? `${dir} writable` : `${dir} can be created under ${d}`;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || path.dirname(d) === d) throw err;
      d = path.dirname(d);
    }
  }
}

export function preflightActivities(deps: MigrationActivityDeps) {
  return redacting({
    async preflight(o: MigrationOptions): Promise<PreflightReport> {
      const checks: Check[] = [];
      const check = async (name: string, fn: () => Promise<string>) => {
        try {
          checks.push({ name, ok: true, detail: await fn() });
        } catch (err) {
          checks.push({ name, ok: false, detail: redactSecrets((err as Error).message) });
        }
      };
      const counts = { dbSessions: 0, crdSessions: 0, crdTemplates: 0 };
      await check('v1 API healthy', async () => {
        // Only the status is reported, never the body; no redirect is followed.
        const r = await fetch(new URL('/health', o.v1.apiUrl), { signal: AbortSignal.timeout(5000), redirect: 'manual' });
        if (!r.ok) throw new Error(`GET /health answered ${r.status}`);
        return `GET ${o.v1.apiUrl}/health → ${r.status}`;
      });
      await check('v1 database reachable', async () =>
        withDb(await v1DatabaseUrl(o), async (c) => {
          const r = await c.query(`SELECT count(*)::int AS n FROM sessions`);
          counts.dbSessions = r.rows[0].n;
          return `${counts.dbSessions} sessions`;
        }),
      );
      await check('v1 CRDs readable', async () => {
        const kube = new Kube(o.v1.kubeconfig);
        for await (const page of kube.eachV1('sessions', o.v1.namespaces)) counts.crdSessions += page.length;
        for await (const page of kube.eachV1('templates', o.v1.namespaces)) counts.crdTemplates += page.length;
        return `${counts.crdSessions} Session and ${counts.crdTemplates} Template CRDs in ${o.v1.namespaces.join(', ')}`;
      });
      await check('v1 Deployments present', async () => {
        const kube = new Kube(o.v1.kubeconfig);
        const found = await Promise.all(o.v1.deployments.map(async (d) => `${d}=${await kube.replicas(d)}`));
        return found.join(', ');
      });
      await check('v2 control plane ready', async () => {
        const r = await fetch(o.v2.readyUrl, { signal: AbortSignal.timeout(5000), redirect: 'manual' });
        if (!r.ok) throw new Error(`${o.v2.readyUrl} answered ${r.status}`);
        return `${o.v2.readyUrl} → ${r.status}`;
      });
      await check('pg_dump available', async () => (await runProcess('pg_dump', ['--version'])).stdout.trim());
      if (o.strategy !== 'fresh-install' || o.cohorts.length) {
        await check('routing store (Redis) reachable', () => withRedis(deps.redisUrl, async (r) => `PING → ${await r.ping()}`));
      }
      await check('backup directory writable', () => writableWithoutWriting(runDir(o)));
      return { ok: checks.every((c) => c.ok), checks, counts };
    },
  });
}
