/**
 * Issue 9 item 5: the migration API validates its whole body, and secrets never enter workflow
 * input. Bad input (path traversal, option injection, batch size 0, non-http URLs, bad durations,
 * a password in a database URL) is a 400 naming the field, and starts nothing. A run against a
 * database whose password the worker reads from its own environment leaves that password nowhere:
 * not in the workflow's history, memo or search attributes, nor in any API response. Errors from
 * child processes and activities are redacted before Temporal records them.
 */
import { WorkflowFailedError, WorkflowNotFoundError } from '@temporalio/client';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Client } from 'pg';
import { redacting, runDir, runProcess } from '../../activities/migration/common';
import { migrationOptions } from '../../api/migrations/options';
import { MIGRATION_WORKFLOW_TYPE, migrationWorkflowId, MigrationOptions, MigrationProgress, redactSecrets } from '../../workflows/migration-api';
import { dbUrl, TEST_ENV } from '../harness/env';
import { ROOT, Stack, waitFor } from '../harness/stack';
import { createV1Database, startFakeV1Api } from '../harness/v1-fixture';

jest.setTimeout(180_000);

const PASSWORD = `Pw-${randomBytes(12).toString('hex')}`;
const ROLE = `mig_sec_${randomBytes(4).toString('hex')}`;
const V1_DB = `v1_sec_${randomBytes(4).toString('hex')}`;
const V1_URL = (() => {
  const u = new URL(dbUrl(V1_DB));
  u.username = ROLE;
  u.password = PASSWORD;
  return u.toString();
})();

async function admin<T>(sql: string, url = TEST_ENV.pgAdminUrl): Promise<T[]> {
  const c = new Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql)).rows as T[];
  } finally {
    await c.end();
  }
}

describe('the migration API validates and keeps secrets out of Temporal', () => {
  const stack = new Stack('security-migration', { REDIS_URL: TEST_ENV.redisUrl, V1_DATABASE_URL: V1_URL });
  let token: string;
  let v1: Awaited<ReturnType<typeof createV1Database>>;
  let v1Api: Awaited<ReturnType<typeof startFakeV1Api>>;
  const backupDir = `/tmp/streamspace-security-${stack.id}`;

  beforeAll(async () => {
    v1 = await createV1Database(TEST_ENV.pgAdminUrl, { name: V1_DB, statusColumn: true, sessions: 5 });
    await admin(`CREATE ROLE ${ROLE} LOGIN PASSWORD '${PASSWORD}'`);
    await admin(`GRANT CONNECT ON DATABASE ${V1_DB} TO ${ROLE}`);
    await admin(`GRANT USAGE ON SCHEMA public TO ${ROLE}; GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${ROLE}`, v1.url);
    v1Api = await startFakeV1Api();
    await stack.start();
    token = await stack.login();
  });

  afterAll(async () => {
    await stack.terminateWorkflows().catch(() => undefined);
    await stack.stop();
    await v1Api?.close();
    await v1?.drop();
    await admin(`DROP ROLE IF EXISTS ${ROLE}`).catch(() => undefined);
  });

  const base = (runId: string) => ({
    runId,
    dryRun: true,
    v1: { apiUrl: v1Api.url, namespaces: ['streamspace'], deployments: [] },
    v2: { readyUrl: `${stack.url}/ready`, deployments: [], platforms: [] },
    backupDir,
    cohorts: [],
  });
  const notStarted = async (runId: string) => {
    await expect(stack.temporal.workflow.getHandle(migrationWorkflowId(runId)).describe()).rejects.toBeInstanceOf(WorkflowNotFoundError);
  };

  let n = 0;
  const refused = async (patch: (b: Record<string, any>) => void, field: RegExp, reason?: RegExp) => {
    const runId = `refused-${stack.id}-${n++}`;
    const body: Record<string, any> = JSON.parse(JSON.stringify(base(runId)));
    patch(body);
    const r = await stack.call('POST', '/api/v1/migrations', body, token);
    expect({ status: r.status, message: r.body?.message }).toEqual({ status: 400, message: expect.stringMatching(field) });
    if (reason) expect(r.body.message).toMatch(reason);
    expect(JSON.stringify(r.body)).not.toContain(PASSWORD);
    await notStarted(runId);
    // Hostile run ids carry this stack's id: workflow ids are global in the namespace.
    if (typeof body.runId === 'string' && body.runId.includes(stack.id)) await notStarted(body.runId);
    return r.body.message as string;
  };

  test('path traversal in the run id or the backup directory → 400, nothing started', async () => {
    await refused((b) => (b.runId = `../../etc-${stack.id}`), /runId/);
    await refused((b) => (b.runId = `a/../../../tmp/${stack.id}`), /runId/);
    await refused((b) => (b.runId = '..'), /runId/);
    await refused((b) => (b.runId = `Run.${stack.id}`), /runId/);
    await refused((b) => (b.backupDir = 'relative/backups'), /backupDir/, /absolute/);
    await refused((b) => (b.backupDir = '/var/lib/streamspace/../../../etc'), /backupDir/, /\.\./);
    await refused((b) => (b.backupDir = '/tmp/x\n'), /backupDir/);
    await refused((b) => (b.v1.kubeconfig = '../../root/.kube/config'), /kubeconfig/);
  });

  test('option injection: a run id, namespace or deployment starting with "-" → 400', async () => {
    await refused((b) => (b.runId = `-rf-${stack.id}`), /runId/);
    await refused((b) => (b.runId = `--checkpoint-action=exec=sh-${stack.id}`), /runId/);
    await refused((b) => (b.v1.namespaces = ['--all-namespaces']), /namespaces/);
    await refused((b) => (b.v1.deployments = ['-n/x']), /deployments/);
    await refused((b) => (b.v2.platforms = ['-kubernetes']), /platforms/);
    await refused((b) => (b.cohorts = [{ name: '-pilot', percent: 5 }]), /cohorts/);
  });

  test('batch size 0 (and other out-of-range numbers) → 400', async () => {
    await refused((b) => (b.importBatchSize = 0), /importBatchSize/);
    await refused((b) => (b.importBatchSize = -5), /importBatchSize/);
    await refused((b) => (b.importBatchSize = 2.5), /importBatchSize/);
    await refused((b) => (b.importBatchSize = 1e9), /importBatchSize/);
    await refused((b) => (b.importPaceMs = -1), /importPaceMs/);
    await refused((b) => (b.approval = { maxSessionFailureRate: 2 }), /maxSessionFailureRate/);
  });

  test('non-http URLs (SSRF) → 400; URLs with credentials → 400', async () => {
    await refused((b) => (b.v1.apiUrl = 'file:///etc/passwd'), /v1\.apiUrl/, /http/);
    await refused((b) => (b.v1.apiUrl = 'gopher://127.0.0.1:6379/_FLUSHALL'), /v1\.apiUrl/, /http/);
    await refused((b) => (b.v2.readyUrl = 'ftp://127.0.0.1/ready'), /v2\.readyUrl/, /http/);
    await refused((b) => (b.v2.readyUrl = 'not a url'), /v2\.readyUrl/);
    await refused((b) => (b.v1.apiUrl = 'http://admin:hunter2@127.0.0.1:8080'), /v1\.apiUrl/, /credentials/);
  });

  test('durations, strategy, cohorts and unknown fields are checked up front → 400 with the field', async () => {
    await refused((b) => (b.decommissionAfter = '2 weeks'), /decommissionAfter/);
    await refused((b) => (b.agentWaitTimeout = '0s'), /agentWaitTimeout/, /more than 0/);
    await refused((b) => (b.decommissionAfter = '9999d'), /decommissionAfter/, /at most/);
    await refused((b) => (b.approval = { soak: 'forever' }), /soak/);
    await refused((b) => (b.strategy = 'yolo'), /strategy/);
    await refused((b) => (b.cohorts = [{ name: 'pilot' }]), /cohorts\[0\]/, /users or a percent/);
    await refused(
      (b) =>
        (b.cohorts = [
          { name: 'pilot', percent: 5 },
          { name: 'pilot', percent: 10 },
        ]),
      /cohorts\[1\]\.name/,
      /duplicate/,
    );
    await refused((b) => (b.cohorts = [{ name: 'full', percent: 5 }]), /cohorts\[0\]\.name/, /reserved/);
    await refused((b) => (b.cohorts = [{ name: 'beta', percent: 101 }]), /percent/);
    await refused((b) => (b.colour = 'blue'), /colour|additional/);
  });

  test('a database password in the request → 400, never echoed; refs are limited to migration secrets', async () => {
    const msg = await refused((b) => (b.v1.databaseUrl = V1_URL), /v1\.databaseUrl/, /must not contain a password/);
    expect(msg).not.toContain(PASSWORD);
    await refused((b) => (b.v2.databaseUrl = `postgres://u@h/db?password=${PASSWORD}`), /v2\.databaseUrl/, /password/);
    await refused((b) => (b.v1.databaseUrl = 'mysql://u@127.0.0.1/db'), /v1\.databaseUrl/, /postgres/);
    await refused((b) => (b.v1.databaseUrlRef = 'env:JWT_SECRET'), /v1\.databaseUrlRef/);
    await refused((b) => (b.v1.databaseUrlRef = 'env:AGENT_TOKEN_SECRET'), /v1\.databaseUrlRef/);
    await refused((b) => (b.v1.databaseUrlRef = 'file:../../etc/shadow'), /v1\.databaseUrlRef/);
    await refused((b) => Object.assign(b.v1, { databaseUrl: 'postgres://u@h/db', databaseUrlRef: 'env:V1_DATABASE_URL' }), /databaseUrlRef/, /not both/);
  });

  test("a run's routes: hostile run ids and bodies → 400; an unknown run → 404", async () => {
    expect((await stack.call('GET', '/api/v1/migrations/..%2F..%2Fetc', undefined, token)).status).toBe(400);
    expect((await stack.call('POST', '/api/v1/migrations/-rf/retry', {}, token)).status).toBe(400);
    expect((await stack.call('POST', `/api/v1/migrations/nope-${stack.id}/approve`, { cohort: '../x' }, token)).status).toBe(400);
    expect((await stack.call('POST', `/api/v1/migrations/nope-${stack.id}/rollback`, { database: 'drop' }, token)).status).toBe(400);
    expect((await stack.call('POST', `/api/v1/migrations/nope-${stack.id}/retry`, undefined, token)).status).toBe(404);
    expect((await stack.call('POST', `/api/v1/migrations/nope-${stack.id}/approve`, { cohort: 'pilot' }, token)).status).toBe(404);
  });

  test('the operator CLI refuses a bad config file with the field, and starts nothing', async () => {
    const file = path.join(stack.logDir, 'bad-migration.json');
    writeFileSync(file, JSON.stringify({ ...base(`cli-${stack.id}`), importBatchSize: 0 }));
    const r = await new Promise<{ code: number; stderr: string }>((resolve) =>
      execFile(
        process.execPath,
        [path.join(ROOT, 'dist/db/migration-main.js'), 'start', '--config', file],
        { env: { ...process.env, ...stack.commonEnv } },
        (err, _out, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr }),
      ),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/importBatchSize/);
    await notStarted(`cli-${stack.id}`);
  });

  test('the CLI config goes through the same validation', () => {
    expect(() => migrationOptions({ ...base('cli-1'), importBatchSize: 0 })).toThrow(/importBatchSize/);
    expect(() => migrationOptions({ ...base('../cli') })).toThrow(/runId/);
    expect(() => migrationOptions({ ...base('cli-2'), v1: { apiUrl: 'file:///etc/passwd' } })).toThrow(/v1\.apiUrl/);
    expect(() => migrationOptions([])).toThrow(/body/);
    const o = migrationOptions(base('cli-3'), {});
    expect(o.v1.database).toEqual({ urlRef: 'env:V1_DATABASE_URL' });
    expect(JSON.stringify(o)).not.toMatch(/postgres:\/\/[^@"]*:[^@"]*@/);
  });

  test('a run started around the API (straight into Temporal) with hostile options fails at once', async () => {
    const good = migrationOptions(base(`direct-${stack.id}`), {});
    const cases: Array<[string, MigrationOptions]> = [
      [`direct-a-${stack.id}`, { ...good, runId: '../../escape' }],
      [`direct-b-${stack.id}`, { ...good, importBatchSize: 0 }],
      [`direct-c-${stack.id}`, { ...good, v1: { ...good.v1, database: { url: 'postgres://u:p@127.0.0.1/db' } } }],
    ];
    for (const [id, input] of cases) {
      const h = await stack.temporal.workflow.start(MIGRATION_WORKFLOW_TYPE, { workflowId: `migration/${id}`, taskQueue: stack.taskQueue, args: [input] });
      const err = await h.result().then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(WorkflowFailedError);
      expect(String((err as WorkflowFailedError).cause?.message)).toMatch(/invalid migration options/);
    }
    // The activities' own guard: the run directory cannot leave backupDir whatever the input.
    expect(() => runDir({ ...good, runId: '../escape' })).toThrow(/run id|leave backupDir/);
    expect(() => runDir({ ...good, runId: '-x' })).toThrow(/run id/);
    expect(runDir(good)).toBe(`${backupDir}/direct-${stack.id}`);
  });

  test('errors of child processes and activities are redacted (message, stack, cause), cancellations keep their class', async () => {
    const leak = `connection to postgres://${ROLE}:${PASSWORD}@127.0.0.1:5432/db failed; password=${PASSWORD} PGPASSWORD='${PASSWORD}'`;
    const child = await runProcess('sh', ['-c', `echo "${leak}" >&2; exit 3`], 'pg_dump').catch((e: Error) => e);
    expect(child).toBeInstanceOf(Error);
    expect((child as Error).message).toMatch(/pg_dump failed \(exit 3\)/);
    expect((child as Error).message).toContain(`postgres://${ROLE}:***@`);
    expect(`${(child as Error).message}${(child as Error).stack}`).not.toContain(PASSWORD);

    class Custom extends Error {}
    const acts = redacting({
      async boom(): Promise<void> {
        throw new Custom(leak, { cause: new Error(`inner ${V1_URL}`) });
      },
    });
    const e = (await acts.boom().catch((x: unknown) => x)) as Custom;
    expect(e).toBeInstanceOf(Custom);
    expect(JSON.stringify({ m: e.message, s: e.stack, c: (e.cause as Error).message, cs: (e.cause as Error).stack })).not.toContain(PASSWORD);
    expect(redactSecrets(`host=h password=${PASSWORD} user=u`)).toBe('host=h password=*** user=u');
  });

  test('a dry run against a database with a known password: the password is nowhere in history, memo or any response', async () => {
    const runId = `plan-${stack.id}`;
    const responses: unknown[] = [];
    const call = async (method: string, p: string, body?: unknown) => {
      const r = await stack.call(method, p, body, token);
      responses.push({ status: r.status, body: r.body });
      return r;
    };
    // The worker reads V1_DATABASE_URL (with the password) from its own environment.
    const start = await call('POST', '/api/v1/migrations', { ...base(runId), v1: { ...base(runId).v1, databaseUrlRef: 'env:V1_DATABASE_URL' } });
    expect(start.status).toBe(201);
    expect(start.body.options.v1.database).toEqual({ urlRef: 'env:V1_DATABASE_URL' });
    // Preflight runs for real: the database check uses the password (no kube-apiserver here, so the CRD checks fail and the run blocks).
    const p = await waitFor(
      'preflight to finish',
      async () => {
        const r = await call('GET', `/api/v1/migrations/${runId}`);
        const body = r.body as MigrationProgress;
        return body.status === 'planned' || body.status === 'blocked' ? body : undefined;
      },
      60_000,
      200,
    );
    expect(p.phases[0].detail).toMatch(/ok v1 database reachable: \d+ sessions/);
    expect(p.phases[0].detail).toMatch(/ok v1 API healthy/);
    await call('POST', `/api/v1/migrations/${runId}/retry`, {});
    await call('POST', `/api/v1/migrations/${runId}/approve`, {});
    await call('POST', `/api/v1/migrations/${runId}/abort`, { reason: 'security test' });
    await waitFor(
      'the run to end',
      async () => {
        const r = await call('GET', `/api/v1/migrations/${runId}`);
        return ['aborted', 'planned'].includes(r.body?.status) ? r.body : undefined;
      },
      60_000,
      200,
    );

    const h = stack.temporal.workflow.getHandle(migrationWorkflowId(runId));
    // Payloads are bytes (base64 in JSON): decode every one, so the search sees what Temporal stores.
    const raw = JSON.stringify(await h.fetchHistory());
    const decoded = [...raw.matchAll(/"data":"([A-Za-z0-9+/=]+)"/g)].map((m) => Buffer.from(m[1], 'base64').toString('utf8'));
    expect(decoded.length).toBeGreaterThan(5);
    const history = [raw, ...decoded].join('\n');
    const desc = await h.describe();
    const memo = JSON.stringify(desc.memo ?? {});
    const attrs = JSON.stringify(desc.typedSearchAttributes ?? []);
    const all = JSON.stringify(responses);
    // Sanity: we searched the right things (the ref and the preflight's result are there).
    expect(history).toContain('env:V1_DATABASE_URL');
    expect(history).toContain('v1 database reachable');
    expect(all).toContain('v1 database reachable');
    expect(memo).toContain(runId);
    for (const [what, text] of Object.entries({ history, memo, attrs, responses: all })) {
      expect({ what, leaked: text.includes(PASSWORD) || text.includes(encodeURIComponent(PASSWORD)) }).toEqual({ what, leaked: false });
    }
  });
});
