/**
 * Writes the gateway's OpenAPI document (what GET /openapi.json serves) to dist/openapi.json without
 * any service running: the app is built with inert dependencies, its routes registered, and the
 * document read. The console's typed client is generated from this file at build time.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { buildApp, AppDeps } from '../api/app';
import { loadGatewayConfig } from '../api/config';

async function main(): Promise<void> {
  const out = path.resolve(__dirname, '..', 'openapi.json');
  const inert = new Proxy({}, { get: () => () => undefined });
  const config = loadGatewayConfig({ ...process.env, STREAMSPACE_DEV_MODE: 'true' });
  const app = await buildApp({
    ...(Object.fromEntries(['pool', 'readPool', 'temporal', 'tokens', 'metrics', 'hub', 'agentGateway', 'vnc', 'live', 'log'].map((k) => [k, inert])) as object),
    config,
  } as AppDeps);
  await app.ready();
  const doc = app.swagger();
  await app.close();
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(doc, null, 2));
  console.log(`[openapi] ${Object.keys((doc as { paths?: object }).paths ?? {}).length} paths → ${path.relative(process.cwd(), out)}`);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
