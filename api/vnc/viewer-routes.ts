/** The viewer page (/vnc-viewer/<id>), its bundled script, and the ticket endpoint. */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { HttpError } from '../errors';

const BUNDLE = path.resolve(__dirname, '..', '..', 'public', 'viewer.js');

const STYLE = `
  html, body { margin: 0; height: 100%; background: #1d1f21; color: #e0e0e0; font: 14px system-ui, sans-serif; }
  body { display: flex; flex-direction: column; }
  #bar { display: flex; gap: 12px; align-items: center; padding: 6px 12px; background: #2b2e31; }
  #status { flex: 1; }
  #status[data-state=connected]::before { content: '● '; color: #5fd35f; }
  #status[data-state=disconnected]::before, #status[data-state=error]::before { content: '● '; color: #e05d5d; }
  #status[data-state=connecting]::before { content: '● '; color: #e0c05d; }
  #screen { flex: 1; overflow: hidden; }
  [hidden] { display: none !important; }
  #login { margin: 10vh auto; display: flex; flex-direction: column; gap: 8px; width: 260px; }
  #login input, #login button { padding: 6px; font: inherit; }
  #login-error { color: #e05d5d; min-height: 1em; }
`;

/**
 * The viewer's policy: its own script and this exact stylesheet (by hash), the WebSocket and API
 * on this origin only, canvas/cursor images from data:/blob:, nothing framed, no plugins.
 */
const VIEWER_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  `style-src 'sha256-${createHash('sha256').update(STYLE).digest('base64')}'`,
  "img-src 'self' data: blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const escapeHtml = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const page = (sessionId: string) => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>StreamSpace session</title>
<style>${STYLE}</style>
</head>
<body data-session-id="${escapeHtml(sessionId)}">
<div id="bar">
  <span id="status" data-state="connecting">Loading…</span>
  <button id="reconnect" type="button">Reconnect</button>
  <button id="disconnect" type="button">Disconnect</button>
</div>
<form id="login" hidden>
  <input name="username" autocomplete="username" placeholder="username" required>
  <input name="password" type="password" autocomplete="current-password" placeholder="password" required>
  <button type="submit">Sign in</button>
  <p id="login-error"></p>
</form>
<div id="screen"></div>
<script src="/vnc-viewer/assets/viewer.js"></script>
</body>
</html>`;

export async function viewerRoutes(app: FastifyInstance): Promise<void> {
  let bundle: Buffer | null = null;

  app.get<{ Params: { id: string } }>(
    '/vnc-viewer/:id',
    { schema: { hide: true, params: Type.Object({ id: Type.String({ maxLength: 255 }) }) } },
    async (req, reply) =>
      reply.type('text/html; charset=utf-8').header('cache-control', 'no-store').header('content-security-policy', VIEWER_CSP).send(page(req.params.id)),
  );

  app.get('/vnc-viewer/assets/viewer.js', { schema: { hide: true } }, async (_req, reply) => {
    bundle ??= await readFile(BUNDLE).catch(() => null);
    if (!bundle) throw new HttpError(503, 'viewer bundle missing: run `npm run build`');
    return reply.type('application/javascript; charset=utf-8').send(bundle);
  });

  app.post<{ Params: { id: string } }>(
    '/api/v1/sessions/:id/vnc-ticket',
    {
      onRequest: app.authenticate,
      schema: { tags: ['sessions'], security: [{ bearer: [] }], params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 255 }) }) },
    },
    async (req, reply) => {
      const user = req.user!;
      const r = await app.deps.pool.query<{ user_id: string; state: string }>('SELECT user_id, state FROM sessions WHERE id = $1', [req.params.id]);
      const s = r.rows[0];
      if (!s || (user.role !== 'admin' && s.user_id !== user.uid)) throw new HttpError(404, `session "${req.params.id}" not found`);
      if (s.state !== 'running') throw new HttpError(409, `session is ${s.state}: only a running session can be viewed`);
      const { ticket, expiresIn } = await app.deps.vnc.issueTicket(req.params.id, user.sub);
      return reply.status(201).send({
        ticket,
        expires_in: expiresIn,
        url: `/api/v1/sessions/${encodeURIComponent(req.params.id)}/vnc?ticket=${encodeURIComponent(ticket)}`,
      });
    },
  );
}
