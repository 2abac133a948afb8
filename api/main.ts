/** Gateway process: `node dist/api/main.js`. Applies migrations first (advisory-locked, idempotent). */
import { createLogger } from '../config/log';
import { envBool, GATEWAY_SECRETS, requireSecrets } from '../config/env';
import { migrate } from '../db/migrate';
import { checkAdminBootstrap, loadGatewayConfig } from './config';
import { startGateway } from './server';
import { onShutdown, runMain } from '../config/process';

async function main() {
  // Outside STREAMSPACE_DEV_MODE: one line naming the missing/weak secret, exit 78.
  requireSecrets('api', GATEWAY_SECRETS);
  const log = createLogger('api');
  const config = loadGatewayConfig();
  if (envBool('MIGRATE_ON_START', true)) {
    const r = await migrate(config.databaseUrl, { log: (m) => log.debug(m) });
    if (r.applied.length) log.info('Applied migrations', { applied: r.applied });
  }
  await checkAdminBootstrap(config);
  const gw = await startGateway(config, log);
  onShutdown(async () => {
    log.info('Shutting down');
    await gw.close();
  });
}

runMain(main);
