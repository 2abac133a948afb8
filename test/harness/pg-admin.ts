/** One short-lived connection to the test PostgreSQL's admin database (CREATE / DROP DATABASE). */
import { Client } from 'pg';
import { TEST_ENV } from './env';

export async function asPgAdmin<T>(fn: (c: Client) => Promise<T>): Promise<T> {
  const c = new Client({ connectionString: TEST_ENV.pgAdminUrl });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}
