/**
 * Fails the whole run loudly when a real service the tests need is not there: tests never skip
 * silently. Run `bash scripts/provision.sh` (or `npm test`, which does) to start them.
 */
import { Connection } from '@temporalio/client';
import Docker from 'dockerode';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Client } from 'pg';
import { TEST_ENV } from './env';

export default async function globalSetup(): Promise<void> {
  const problems: string[] = [];
  const root = path.resolve(__dirname, '..', '..');
  if (!existsSync(path.join(root, 'dist', 'api', 'main.js')) || !existsSync(path.join(root, 'dist', 'workflow-bundle.js')))
    problems.push('dist/ is not built: run `npm run build` (npm test does it)');
  const pg = new Client({ connectionString: TEST_ENV.pgAdminUrl });
  await pg.connect().then(
    () => pg.end(),
    (e: Error) => problems.push(`PostgreSQL at ${TEST_ENV.pgAdminUrl}: ${e.message}`),
  );
  try {
    const c = await Connection.connect({ address: TEST_ENV.temporalAddress, connectTimeout: 5000 });
    await c.close();
  } catch (e) {
    problems.push(`Temporal at ${TEST_ENV.temporalAddress}: ${(e as Error).message}`);
  }
  const docker = new Docker({ socketPath: TEST_ENV.dockerHost.replace('unix://', '') });
  try {
    await docker.ping();
    await docker.getImage(TEST_ENV.sessionImage).inspect();
  } catch (e) {
    problems.push(`Docker / session image ${TEST_ENV.sessionImage}: ${(e as Error).message}`);
  }
  if (problems.length) {
    throw new Error(`Test services are missing (run: bash scripts/provision.sh):\n  - ${problems.join('\n  - ')}`);
  }
}
