/** Gateway process: `node dist/api/main.js`. Applies migrations first (advisory-locked, idempotent). */
import { createLogger } from '../config/log';
import { envBool } from '../config/env';
import { migrate } from '../db/migrate';
import { loadGatewayConfig } from './config';
import { startGateway } from './server';

async function main() {
  const log = createLogger('api');
  const config = loadGatewayConfig();
  if (envBool('MIGRATE_ON_START', true)) {
    const r = await migrate(config.databaseUrl, { log: (m) => log.debug(m) });
    if (r.applied.length) log.info('Applied migrations', { applied: r.applied });
  }
  const gw = await startGateway(config, log);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    log.info('Shutting down');
    await gw.close();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
