/**
 * The operator commands say what they do (issue 11): `npm run db:migrate` is the schema only,
 * `npm run migration -- …` the v1 → v2 run, and each builds what it needs first.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { Client } from 'pg';
import { dbUrl, TEST_ENV } from './harness/env';
import { ROOT } from './harness/stack';

jest.setTimeout(120_000);
const exec = promisify(execFile);

async function npm(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
  try {
    const r = await exec('npm', ['run', '--silent', ...args], { cwd: ROOT, env: { ...process.env, ...env } });
    return { code: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}

describe('CLI names', () => {
  const db = `ss_cli_${randomBytes(4).toString('hex')}`;
  const url = dbUrl(db);
  beforeAll(async () => {
    const c = new Client({ connectionString: TEST_ENV.pgAdminUrl });
    await c.connect();
    await c.query(`CREATE DATABASE ${db}`);
    await c.end();
  });

  test('npm run db:migrate applies the schema; status lists it; a run id is pointed at `npm run migration`', async () => {
    const up = await npm(['db:migrate'], { DATABASE_URL: url });
    expect(up.code).toBe(0);
    expect(up.out).toMatch(/applied: v1\.0\.0-baseline, .*v2\.0\.6-command-deadlines/);
    const status = await npm(['db:migrate', '--', 'status'], { DATABASE_URL: url });
    expect(status.out).toMatch(/v2\.0\.6-command-deadlines\s+\d{4}-/);
    const wrong = await npm(['db:migrate', '--', 'status', 'mig-123'], { DATABASE_URL: url });
    expect(wrong.code).toBe(2);
    expect(wrong.err).toMatch(/npm run migration -- status mig-123/);
    // The migration run's commands are not schema commands.
    const notHere = await npm(['db:migrate', '--', 'approve', 'mig-123'], { DATABASE_URL: url });
    expect(notHere.code).toBe(2);
    expect(notHere.err).toMatch(/unknown command: approve/);
  });

  test('npm run migration lists plan, start, status, approve, rollback; it never touches the schema', async () => {
    const help = await npm(['migration']);
    expect(help.code).toBe(2);
    for (const c of ['plan', 'start', 'status', 'approve', 'rollback', 'abort']) expect(help.out).toMatch(new RegExp(`^  ${c}\\s`, 'm'));
    expect(help.out).not.toMatch(/^ {2}up\s/m);
    const noRun = await npm(['migration', '--', 'status']);
    expect(noRun.code).not.toBe(0);
    expect(noRun.err).toMatch(/run id|runId/i);
  });
});
