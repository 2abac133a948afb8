/**
 * The audit middleware, as v1's (api/internal/middleware/auditlog.go): every state-changing call
 * under /api/v1 (POST, PUT, PATCH, DELETE), answered or refused, becomes one audit_log row with
 * v1's columns (db/audit.ts). Rows are queued and written in batches after the response (the
 * request never waits for them, and a failed write never fails it); the queue is bounded
 * (AUDIT_QUEUE_MAX) and drained when the gateway closes. A write that fails is retried once,
 * then logged with its count.
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Pool } from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../../config/log';
import { AuditEntry, auditedBody, changes, insertAudit } from '../../db/audit';

const AUDITED_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
/** Route parameters that name the resource (resource_id). */
const ID_PARAMS = ['id', 'username', 'agentId', 'runId', 'name', 'tokenId'];

declare module 'fastify' {
  interface FastifyInstance {
    audit: AuditWriter;
  }
  interface FastifyRequest {
    auditStart?: number;
    auditCreatedId?: string;
    auditError?: string;
  }
}

export class AuditWriter {
  private queue: AuditEntry[] = [];
  private draining: Promise<void> | null = null;
  dropped = 0;
  written = 0;

  constructor(
    private readonly pool: Pick<Pool, 'query'>,
    private readonly log: Pick<Logger, 'warn'>,
    private readonly max = 10_000,
    private readonly batch = 200,
  ) {}

  push(e: AuditEntry): void {
    if (this.queue.length >= this.max) {
      if (this.dropped++ % 1000 === 0) this.log.warn('audit queue full: entries dropped (is the database slow?)', { dropped: this.dropped, max: this.max });
      return;
    }
    this.queue.push(e);
    this.drain();
  }

  private drain(): void {
    if (this.draining) return;
    this.draining = (async () => {
      while (this.queue.length) {
        const rows = this.queue.splice(0, this.batch);
        try {
          await insertAudit(this.pool as never, rows);
        } catch {
          await sleep(1000);
          try {
            await insertAudit(this.pool as never, rows);
          } catch (err) {
            this.log.warn('audit entries not written', { count: rows.length, error: (err as Error).message });
            continue;
          }
        }
        this.written += rows.length;
      }
    })().finally(() => {
      this.draining = null;
      if (this.queue.length) this.drain();
    });
  }

  /** Resolves once everything queued so far is written (or given up on). */
  async flush(): Promise<void> {
    while (this.draining) await this.draining;
  }
}

export const auditPlugin = fp(async (app: FastifyInstance) => {
  const writer = new AuditWriter(app.deps.pool, app.deps.log, Number(process.env.AUDIT_QUEUE_MAX) || 10_000);
  app.decorate('audit', writer);
  const audited = (req: FastifyRequest) => AUDITED_METHODS.has(req.method) && req.url.startsWith('/api/v1/');

  app.addHook('onRequest', async (req) => {
    if (audited(req)) req.auditStart = Date.now();
  });
  // What the answer says that the row needs: a created resource's id, a refusal's reason.
  app.addHook('onSend', async (req: FastifyRequest, reply: FastifyReply, payload: unknown) => {
    if (!audited(req) || typeof payload !== 'string' || payload.length > 1_000_000) return payload;
    const created = reply.statusCode === 201 || (req.method === 'POST' && reply.statusCode < 300);
    if (!created && reply.statusCode < 400) return payload;
    try {
      const body = JSON.parse(payload) as Record<string, unknown>;
      if (reply.statusCode >= 400 && typeof body?.message === 'string') req.auditError = body.message.slice(0, 1000);
      else if (created && typeof body?.id === 'string' && !Array.isArray(body)) req.auditCreatedId = body.id;
    } catch {
      // not JSON
    }
    return payload;
  });
  app.addHook('onResponse', async (req, reply) => {
    if (!audited(req)) return;
    const path = req.url.split('?')[0];
    const params = (req.params ?? {}) as Record<string, unknown>;
    const fromParams = ID_PARAMS.map((k) => params[k]).find((v): v is string => typeof v === 'string');
    const start = req.auditStart ?? Date.now();
    writer.push({
      user_id: req.user?.uid ?? '',
      action: req.method,
      resource_type: path,
      resource_id: fromParams ?? req.auditCreatedId ?? '',
      changes: changes({
        method: req.method,
        path,
        status_code: reply.statusCode,
        duration_ms: Math.max(0, Date.now() - start),
        error: req.auditError ?? '',
        metadata: {
          route: req.routeOptions?.url ?? null,
          ...(req.user ? { username: req.user.sub, role: req.user.role } : {}),
          request: auditedBody(req.body),
        },
      }),
      timestamp: new Date(start),
      ip_address: req.ip ?? null,
    });
  });
  app.addHook('onClose', async () => {
    await writer.flush();
  });
});
