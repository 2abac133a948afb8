/**
 * The web console (console/, built into dist/console by `npm run build`): index.html at `/` and at
 * the console's own paths (history-API routes), its hashed assets under /console/assets/, and the
 * little the browser needs to know before signing in (GET /api/v1/console/config).
 */
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Type } from '@sinclair/typebox';
import { HttpError } from '../errors';

const CONSOLE_DIR = path.resolve(__dirname, '..', '..', 'console');
/** Paths the console's router owns; each returns index.html. */
const PAGES = ['/', '/login', '/sessions', '/catalog', '/admin', '/admin/*'];

/**
 * Scripts from this origin only; styles from this origin or the <style> elements the component
 * library's emotion cache creates with this response's nonce; nothing framed, no plugins.
 */
function consoleCsp(nonce: string): string {
  return [
    "default-src 'none'",
    "script-src 'self'",
    `style-src 'self' 'nonce-${nonce}'`,
    "img-src 'self' data: blob:",
    "font-src 'self' data:",
    "connect-src 'self'",
    "manifest-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ].join('; ');
}

export async function consoleRoutes(app: FastifyInstance): Promise<void> {
  const page = async (_req: unknown, reply: FastifyReply) => {
    // Read per request (a few KB): a rebuilt console is served at once, never a stale script name.
    const template = await readFile(path.join(CONSOLE_DIR, 'index.html'), 'utf8').catch(() => null);
    if (!template) throw new HttpError(503, 'console not built: run `npm run build`');
    const nonce = randomBytes(16).toString('base64');
    return reply
      .type('text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .header('content-security-policy', consoleCsp(nonce))
      .send(template.replace(/__CSP_NONCE__/g, nonce));
  };
  for (const url of PAGES) app.get(url, { schema: { hide: true } }, page);

  await app.register(fastifyStatic, {
    root: path.join(CONSOLE_DIR, 'assets'),
    prefix: '/console/assets/',
    // Names carry their content hash: cached for a year, never revalidated.
    immutable: true,
    maxAge: '365d',
    index: false,
    wildcard: true,
    decorateReply: false,
    // The build writes .br and .gz next to each asset: sent by Accept-Encoding, never compressed per request.
    preCompressed: true,
    // A missing file is a 404 from the gateway's own handler, not an exception.
    allowedPath: (p) => !p.includes('..'),
  });

  app.get(
    '/api/v1/console/config',
    {
      schema: {
        tags: ['console'],
        response: { 200: Type.Object({ version: Type.String(), temporal_ui_url: { ...Type.String(), nullable: true } }) },
      },
    },
    async () => ({ version: '2.0.0', temporal_ui_url: app.deps.config.temporalUiUrl }),
  );
}
