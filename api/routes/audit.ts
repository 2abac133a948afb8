/**
 * GET /api/v1/audit (admins): v1's audit_log, newest first, filtered and keyset-paged like
 * GET /api/v1/sessions (x-next-cursor, x-total-count).
 */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { AuditEntrySchema } from '../audit/schemas';
import { ErrorSchema } from '../schemas';
import { decodeCursor, encodeCursor } from '../paging';

const MAX_PAGE = 1000;
const DEFAULT_PAGE = 100;

const AuditQuery = Type.Object(
  {
    user: Type.Optional(Type.String({ maxLength: 255, description: "a username or users.id; 'system' for automatic actions" })),
    action: Type.Optional(Type.String({ maxLength: 100, description: 'POST, PUT, PATCH, DELETE, or e.g. session.reconcile_repair' })),
    resource_type: Type.Optional(Type.String({ maxLength: 100, description: 'exact, or a prefix ending in * (e.g. /api/v1/sessions*)' })),
    resource_id: Type.Optional(Type.String({ maxLength: 255 })),
    since: Type.Optional(Type.String({ format: 'date-time', description: 'from this instant (inclusive)' })),
    until: Type.Optional(Type.String({ format: 'date-time', description: 'before this instant' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PAGE, description: `page size (default ${DEFAULT_PAGE})` })),
    cursor: Type.Optional(Type.String({ maxLength: 512, description: 'the x-next-cursor of the previous page' })),
  },
  { additionalProperties: false },
);
type AuditQuery = {
  user?: string;
  action?: string;
  resource_type?: string;
  resource_id?: string;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
};

interface Cursor {
  t: string;
  i: number;
}
const validCursor = (c: Cursor) => typeof c.t === 'string' && /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?$/.test(c.t) && Number.isInteger(c.i);

export async function auditRoutes(app: FastifyInstance): Promise<void> {
  app.get<{ Querystring: AuditQuery }>(
    '/api/v1/audit',
    {
      onRequest: app.requireAdmin,
      schema: {
        tags: ['audit'],
        security: [{ bearer: [] }],
        querystring: AuditQuery,
        response: {
          200: {
            ...Type.Array(AuditEntrySchema),
            headers: {
              'x-total-count': Type.Integer({ description: 'entries matching the filters, on all pages' }),
              'x-next-cursor': Type.String({ description: "the next page's cursor; absent on the last page" }),
            },
          },
          400: ErrorSchema,
          401: ErrorSchema,
          403: ErrorSchema,
        },
      },
    },
    async (req, reply) => {
      const q = req.query;
      const where: string[] = [];
      const args: unknown[] = [];
      const arg = (v: unknown) => `$${args.push(v)}`;
      if (q.user !== undefined) {
        const p = arg(q.user);
        where.push(`(a.user_id = ${p} OR a.user_id IN (SELECT id::text FROM users WHERE username = ${p}))`);
      }
      if (q.action !== undefined) where.push(`a.action = ${arg(q.action)}`);
      if (q.resource_type !== undefined) {
        if (q.resource_type.endsWith('*')) where.push(`a.resource_type LIKE ${arg(q.resource_type.slice(0, -1).replace(/[\\%_]/g, (m) => '\\' + m) + '%')}`);
        else where.push(`a.resource_type = ${arg(q.resource_type)}`);
      }
      if (q.resource_id !== undefined) where.push(`a.resource_id = ${arg(q.resource_id)}`);
      if (q.since !== undefined) where.push(`a.timestamp >= (${arg(q.since)}::timestamptz AT TIME ZONE 'UTC')`);
      if (q.until !== undefined) where.push(`a.timestamp < (${arg(q.until)}::timestamptz AT TIME ZONE 'UTC')`);
      const filtered = where.length ? `WHERE ${where.join(' AND ')}` : '';
      const total = await app.deps.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM audit_log a ${filtered}`, args);

      const pageWhere = [...where];
      if (q.cursor) {
        const c = decodeCursor<Cursor>(q.cursor, validCursor);
        pageWhere.push(`(a.timestamp, a.id) < (${arg(c.t)}::timestamp, ${arg(c.i)}::int)`);
      }
      const limit = q.limit ?? DEFAULT_PAGE;
      const rows = await app.deps.pool.query<Record<string, unknown> & { key: string; id: number }>(
        `SELECT a.id, a.user_id, u.username, a.action, a.resource_type, a.resource_id, a.changes,
                to_char(a.timestamp, 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS timestamp, a.ip_address,
                to_char(a.timestamp, 'YYYY-MM-DD HH24:MI:SS.US') AS key
           FROM audit_log a LEFT JOIN users u ON u.id::text = a.user_id AND a.user_id <> ''
          ${pageWhere.length ? `WHERE ${pageWhere.join(' AND ')}` : ''}
          ORDER BY a.timestamp DESC NULLS LAST, a.id DESC
          LIMIT ${limit + 1}`,
        args,
      );
      const page = rows.rows.slice(0, limit);
      void reply.header('x-total-count', String(total.rows[0].n));
      const last = page[page.length - 1];
      if (rows.rows.length > limit && last?.key) {
        const next = encodeCursor({ t: last.key, i: last.id });
        const params = new URLSearchParams(req.query as Record<string, string>);
        params.set('cursor', next);
        void reply.header('x-next-cursor', next).header('link', `</api/v1/audit?${params.toString()}>; rel="next"`);
      }
      return page.map(({ key: _key, ...r }) => r);
    },
  );
}
