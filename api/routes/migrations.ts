/**
 * The blue-green migration through the API (admins only): start, watch, approve, retry, roll
 * back, abort; and the spec's Option B bulk import of v1 sessions.
 */
import { Type } from '@sinclair/typebox';
import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from '@temporalio/client';
import type { FastifyInstance } from 'fastify';
import { convertSession } from '../../activities/migration/convert';
import { ImportError, saveImportedSession } from '../../activities/migration/store';
import { adoptSessions } from '../../activities/session-adoption';
import {
  abortSignal,
  approveSignal,
  cancelDecommissionSignal,
  MIGRATION_WORKFLOW_TYPE,
  migrationWorkflowId,
  progressQuery,
  redactDeep,
  redactSecrets,
  retrySignal,
  rollbackUpdate,
} from '../../workflows/migration-api';
import { SA } from '../../workflows/search-attributes';
import { MigrationRunSchema } from '../schemas';
import { HttpError } from '../errors';
import { MigrationInputError, migrationOptions, MigrationRequest, MigrationRequestSchema, RUN_ID_PATTERN } from '../migrations/options';
import { sessionWorkflowSettings } from '../config';

const RunParams = Type.Object({ runId: Type.String({ pattern: RUN_ID_PATTERN }) }, { additionalProperties: false });

/** The operator's requests: a cohort to approve, a reason (abort, rollback), how a rollback restores the database. */
const SignalBody = Type.Object(
  {
    cohort: Type.Optional(Type.String({ pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' })),
    reason: Type.Optional(Type.String({ maxLength: 2000 })),
    database: Type.Optional(Type.Union([Type.Literal('undo'), Type.Literal('restore')])),
  },
  { additionalProperties: false },
);

export async function migrationRoutes(app: FastifyInstance): Promise<void> {
  const admin = { onRequest: app.requireAdmin };
  const secured = { security: [{ bearer: [] }], tags: ['migrations'] };
  const handle = (runId: string) => app.deps.temporal.workflow.getHandle(migrationWorkflowId(runId));

  // The body is validated as a whole (MigrationRequestSchema, then migrationOptions: URLs, paths,
  // durations, database refs); a refused request starts nothing. Database passwords are never
  // accepted here: the worker resolves them (see api/migrations/options.ts).
  app.post<{ Body: MigrationRequest }>(
    '/api/v1/migrations',
    {
      ...admin,
      bodyLimit: 1024 * 1024,
      schema: { ...secured, body: MigrationRequestSchema },
      // The schema documents the body; migrationOptions validates it (one set of messages, no type
      // coercion), the same way for the API and the CLI's config file.
      validatorCompiler: () => () => true,
    },
    async (req, reply) => {
      let options;
      try {
        options = migrationOptions(req.body ?? {}, { ...process.env, PORT: String(app.deps.config.port) });
      } catch (err) {
        if (err instanceof MigrationInputError) throw new HttpError(400, err.message);
        throw err;
      }
      await app.deps.temporal.workflow
        .start(MIGRATION_WORKFLOW_TYPE, {
          workflowId: migrationWorkflowId(options.runId),
          taskQueue: app.deps.config.taskQueue,
          args: [options],
          memo: { runId: options.runId, strategy: options.strategy },
          typedSearchAttributes: [{ key: SA.migrationPhase, value: 'starting' }],
        })
        .catch((err: Error) => {
          if (err instanceof WorkflowExecutionAlreadyStartedError) throw new HttpError(409, `migration run "${options.runId}" already exists`);
          throw new HttpError(502, redactSecrets(`could not start the run: ${err.message}`));
        });
      return reply.status(201).send({ runId: options.runId, workflowId: migrationWorkflowId(options.runId), options });
    },
  );

  /** The run in the Temporal Web UI (TEMPORAL_UI_URL), for operators following its retries. */
  const temporalUrl = (workflowId: string) => {
    const ui = app.deps.config.temporalUiUrl;
    return ui ? `${ui}/namespaces/${encodeURIComponent(app.deps.config.temporalNamespace)}/workflows/${encodeURIComponent(workflowId)}` : null;
  };

  // Every run, newest first, from Temporal's visibility store (the runs are workflows).
  app.get('/api/v1/migrations', { ...admin, schema: { ...secured, response: { 200: Type.Array(MigrationRunSchema) } } }, async () => {
    const runs: Array<Record<string, unknown>> = [];
    for await (const w of app.deps.temporal.workflow.list({ query: `WorkflowType = '${MIGRATION_WORKFLOW_TYPE}'` })) {
      const runId = typeof w.memo?.runId === 'string' ? w.memo.runId : w.workflowId.replace(/^migration\//, '');
      const phase = w.typedSearchAttributes?.get(SA.migrationPhase) ?? null;
      runs.push({
        run_id: runId,
        workflow_id: w.workflowId,
        status: w.status.name.toLowerCase(),
        phase,
        started_at: w.startTime,
        closed_at: w.closeTime ?? null,
        temporal_url: temporalUrl(w.workflowId),
      });
      if (runs.length >= 200) break;
    }
    return runs;
  });

  app.get<{ Params: { runId: string } }>('/api/v1/migrations/:runId', { ...admin, schema: { ...secured, params: RunParams } }, async (req) => {
    try {
      return { ...redactDeep(await handle(req.params.runId).query(progressQuery)), temporal_url: temporalUrl(migrationWorkflowId(req.params.runId)) };
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) throw new HttpError(404, `migration run "${req.params.runId}" not found`);
      throw err;
    }
  });

  // Every row the import could not take, as CSV (one line per row: what, where, why).
  app.get<{ Params: { runId: string } }>(
    '/api/v1/migrations/:runId/failures.csv',
    { ...admin, schema: { ...secured, params: RunParams } },
    async (req, reply) => {
      const r = await app.deps.pool
        .query<{ kind: string; source_id: string; namespace: string; status: string; reason: string | null; via: string | null; imported_at: Date | null }>(
          `SELECT kind, source_id, namespace, status, reason, via, imported_at FROM migration_import_results
            WHERE run_id = $1 AND status = 'failed' ORDER BY kind, namespace, source_id`,
          [req.params.runId],
        )
        .catch((err: Error & { code?: string }) => {
          if (err.code === '42P01') return { rows: [] }; // no import has run on this database yet
          throw err;
        });
      const lines = [['kind', 'id', 'namespace', 'status', 'reason', 'source', 'at'].join(',')];
      for (const f of r.rows)
        lines.push(
          [f.kind, f.source_id, f.namespace, f.status, redactSecrets(f.reason ?? ''), f.via ?? '', f.imported_at?.toISOString() ?? ''].map(csvCell).join(','),
        );
      return reply
        .type('text/csv; charset=utf-8')
        .header('content-disposition', `attachment; filename="migration-${req.params.runId}-failures.csv"`)
        .send(lines.join('\r\n') + '\r\n');
    },
  );

  const signal = (name: string, fn: (runId: string, body: Record<string, string | undefined>) => Promise<unknown>) =>
    app.post<{ Params: { runId: string }; Body: Record<string, string | undefined> }>(
      `/api/v1/migrations/:runId/${name}`,
      {
        ...admin,
        schema: { ...secured, params: RunParams, body: SignalBody },
        // No body (curl -X POST …/retry) is an empty one.
        preValidation: async (req) => {
          if (req.body === undefined || req.body === null) req.body = {};
        },
      },
      async (req, reply) => {
        try {
          await fn(req.params.runId, req.body ?? {});
        } catch (err) {
          if (err instanceof HttpError) throw err;
          if (err instanceof WorkflowNotFoundError) throw new HttpError(404, `migration run "${req.params.runId}" not found`);
          throw new HttpError(409, redactSecrets((err as Error).message));
        }
        return reply.status(202).send(redactDeep(await handle(req.params.runId).query(progressQuery)));
      },
    );
  signal('approve', (id, b) => handle(id).signal(approveSignal, b.cohort));
  signal('retry', (id) => handle(id).signal(retrySignal));
  signal('cancel-decommission', (id) => handle(id).signal(cancelDecommissionSignal));
  signal('abort', (id, b) => handle(id).signal(abortSignal, b.reason));
  // {reason?, database?: 'undo' (default: undo v2's changes, v1's writes kept) | 'restore' (the dump; last resort)}
  signal('rollback', (id, b) => {
    if (b.database !== undefined && b.database !== 'undo' && b.database !== 'restore') throw new HttpError(400, 'database must be "undo" or "restore"');
    return handle(id).executeUpdate(rollbackUpdate, { args: [b.reason ?? '', b.database ? { database: b.database } : {}] });
  });

  // The spec's Option B: v1 Session CRDs (kubectl get sessions -o json) or converted records.
  // Each imported session becomes a managed v2 session (its workflow, hibernated until woken).
  app.post<{ Body: unknown; Querystring: { platform?: 'kubernetes' | 'docker' } }>(
    '/api/v1/sessions/bulk-import',
    {
      ...admin,
      bodyLimit: 10 * 1024 * 1024,
      schema: {
        tags: ['sessions'],
        security: [{ bearer: [] }],
        querystring: Type.Object(
          {
            platform: Type.Optional(
              Type.Union([Type.Literal('kubernetes'), Type.Literal('docker')], { description: 'where imported sessions run when woken (default kubernetes)' }),
            ),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (req) => {
      const body = req.body as { items?: unknown[] } | unknown[];
      const items = Array.isArray(body) ? body : Array.isArray(body?.items) ? body.items : null;
      if (!items) throw new HttpError(400, 'body must be a JSON array or {"items": [...]} of v1 Sessions');
      const { pool, temporal, config } = app.deps;
      const platform = req.query.platform ?? 'kubernetes';
      const templates = new Set((await pool.query('SELECT name FROM template_catalog')).rows.map((r) => r.name as string));
      const seen = new Set<string>();
      const results: Array<{ index: number; id: string | null; status: 'imported' | 'unchanged' | 'failed'; reason?: string }> = [];
      for (const [index, raw] of items.entries()) {
        const item = (raw ?? {}) as Record<string, any>;
        const isCrd = typeof item.apiVersion === 'string' || item.metadata;
        const conv = isCrd
          ? convertSession({ crd: item }, templates, { platform })
          : convertSession(
              {
                crd: {
                  metadata: { name: item.id },
                  spec: { user: item.user, template: item.template, state: item.state ?? 'hibernated', resources: { memory: item.memory, cpu: item.cpu } },
                },
              },
              templates,
              { platform },
            );
        const id = conv.ok ? conv.record.id : String(item.metadata?.name ?? item.id ?? '') || null;
        if (!conv.ok) {
          results.push({ index, id, status: 'failed', reason: conv.reason });
          continue;
        }
        if (seen.has(conv.record.id)) {
          results.push({ index, id, status: 'failed', reason: 'duplicate id in this request' });
          continue;
        }
        seen.add(conv.record.id);
        try {
          const written = await saveImportedSession(pool, conv.record, { onConflict: 'update' });
          results.push({ index, id: conv.record.id, status: written ? 'imported' : 'unchanged' });
        } catch (err) {
          if (!(err instanceof ImportError)) throw err;
          results.push({ index, id: conv.record.id, status: 'failed', reason: err.message });
        }
      }
      const imported = results.filter((r) => r.status === 'imported').map((r) => r.id!);
      const adoption = await adoptSessions({ pool, ...sessionWorkflowSettings(config, temporal) }, imported);
      for (const f of adoption.failures) {
        const r = results.find((x) => x.id === f.id);
        if (r) Object.assign(r, { status: 'failed', reason: f.reason });
      }
      const count = (st: string) => results.filter((r) => r.status === st).length;
      return { total: items.length, imported: count('imported'), unchanged: count('unchanged'), failed: count('failed'), results };
    },
  );
}

/** RFC 4180 cell; a leading =, +, - or @ is quoted away so a spreadsheet does not run it as a formula. */
function csvCell(v: string): string {
  const safe = /^[=+\-@\t\r]/.test(v) ? `'${v}` : v;
  return /[",\r\n]/.test(safe) ? `"${safe.replace(/"/g, '""')}"` : safe;
}
