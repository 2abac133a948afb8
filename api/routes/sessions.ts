/**
 * Sessions: database rows owned by one Temporal workflow each (`session/<id>`). Creating starts
 * the workflow; hibernate, wake and stop are Updates, so concurrent requests are serialised by
 * the workflow and never run twice. Users see their own sessions; admins see all.
 */
import { Type } from '@sinclair/typebox';
import { ServiceError, WorkflowHandle, WorkflowNotFoundError, WorkflowUpdateFailedError, WorkflowUpdateStage } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { FailureType, hibernateUpdate, sessionWorkflowId, statusQuery, stopUpdate, wakeUpdate } from '../../workflows/session-api';
import { startSessionWorkflow } from '../../activities/session-adoption';
import { ensureUser } from '../../db/users';
import { HttpError } from '../app';
import { USERNAME_PATTERN } from './users';

const CreateSession = Type.Object(
  {
    user: Type.Optional(Type.String({ pattern: USERNAME_PATTERN })),
    template: Type.String({ minLength: 1, maxLength: 255 }),
    platform: Type.Union([Type.Literal('docker'), Type.Literal('kubernetes')]),
    state: Type.Optional(Type.Literal('running', { description: 'desired state; sessions are created running' })),
    tags: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 63 }), { maxItems: 20 })),
    persistent_home: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
type CreateSession = { user?: string; template: string; platform: 'docker' | 'kubernetes'; state?: 'running'; tags?: string[]; persistent_home?: boolean };

const ListQuery = Type.Object(
  {
    state: Type.Optional(Type.String()),
    platform: Type.Optional(Type.String()),
    user: Type.Optional(Type.String()),
    tag: Type.Optional(Type.String()),
  },
  { additionalProperties: false },
);

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 255 }) });

/** Hibernate, wake and stop answer within `wait` seconds: the final state (200) or the transition under way (202). */
const WaitQuery = Type.Object(
  { wait: Type.Optional(Type.Integer({ minimum: 0, maximum: 60, description: 'seconds to wait for the outcome (default 5)' })) },
  { additionalProperties: false },
);
const DEFAULT_WAIT_S = 5;
/** How long GET /sessions/:id waits for the workflow's live status before answering without it. */
const QUERY_TIMEOUT_MS = 1500;
const TARGET = { hibernate: 'hibernated', wake: 'running', stop: 'terminated' } as const;
/** How long a workflow may take to accept an Update before the request fails with 503 (no worker?). */
const ACCEPT_TIMEOUT_MS = 10_000;

interface SessionRow {
  id: string;
  /** users.id */
  user_id: string;
  username: string | null;
  template_name: string;
  state: string;
  platform: string | null;
  agent_id: string | null;
  agent_name: string | null;
  cluster_id: string | null;
  tags: string[] | null;
  platform_metadata: Record<string, unknown> | null;
  error_message: string | null;
  created_at: Date;
  updated_at: Date;
}

const SELECT_SESSION = `
  SELECT s.id, s.user_id, u.username, s.template_name, s.state, s.platform, s.agent_id, a.agent_id AS agent_name,
         s.cluster_id, s.tags, s.platform_metadata, s.error_message, s.created_at, s.updated_at
    FROM sessions s
    LEFT JOIN agents a ON a.id = s.agent_id
    LEFT JOIN users u ON u.id::text = s.user_id`;

function present(row: SessionRow, admin: boolean) {
  const meta = { ...(row.platform_metadata ?? {}) };
  delete meta.vnc; // the session's internal address is the agent's business, not the browser's
  return {
    id: row.id,
    user: row.username ?? row.user_id,
    template: row.template_name,
    state: row.state,
    platform: row.platform,
    agent_id: row.agent_name,
    cluster_id: row.cluster_id,
    tags: row.tags ?? [],
    error: row.error_message,
    url: `/vnc-viewer/${encodeURIComponent(row.id)}`,
    created_at: row.created_at,
    updated_at: row.updated_at,
    ...(admin ? { platform_metadata: meta } : {}),
  };
}

export async function sessionRoutes(app: FastifyInstance): Promise<void> {
  const auth = { onRequest: app.authenticate };
  const secured = { security: [{ bearer: [] }], tags: ['sessions'] };

  async function loadOwned(req: FastifyRequest, id: string): Promise<SessionRow> {
    const r = await app.deps.pool.query<SessionRow>(`${SELECT_SESSION} WHERE s.id = $1`, [id]);
    const row = r.rows[0];
    // Another user's session is reported exactly like a missing one: ids are not disclosed.
    if (!row || (req.user!.role !== 'admin' && row.user_id !== req.user!.uid)) throw new HttpError(404, `session "${id}" not found`);
    return row;
  }

  app.post<{ Body: CreateSession }>('/api/v1/sessions', { ...auth, schema: { ...secured, body: CreateSession } }, async (req, reply) => {
    const { pool, temporal, config } = app.deps;
    const claims = req.user!;
    const owner = req.body.user ?? claims.sub;
    if (owner !== claims.sub && claims.role !== 'admin') throw new HttpError(403, 'only admins create sessions for other users');
    const tpl = await pool.query('SELECT 1 FROM template_catalog WHERE name = $1', [req.body.template]);
    if (!tpl.rowCount) throw new HttpError(400, `unknown template "${req.body.template}" (GET /api/v1/templates lists them)`);
    // Admins may create sessions for users that have not logged in yet (as the spec's examples do).
    const ownerId = owner === claims.sub ? claims.uid : (await ensureUser(pool, { username: owner })).id;

    const id = randomUUID();
    const workflowId = sessionWorkflowId(id);
    // workflow_confirmed = false until the workflow is known to exist: if this pod dies in
    // between, the session reaper (api/sessions/reaper.ts) starts it.
    await pool.query(
      `INSERT INTO sessions (id, user_id, template_name, state, platform, tags, persistent_home, workflow_id, namespace, workflow_confirmed)
       VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, NULL, false)`,
      [id, ownerId, req.body.template, req.body.platform, JSON.stringify(req.body.tags ?? []), req.body.persistent_home ?? true, workflowId],
    );
    try {
      await startSessionWorkflow(
        { temporal, taskQueue: config.taskQueue, startTimeoutMs: config.sessionStartTimeoutMs, historyLimit: config.sessionHistoryLimit },
        { sessionId: id, user: owner, template: req.body.template, platform: req.body.platform },
      );
    } catch (err) {
      await pool.query(`UPDATE sessions SET state = 'failed', error_message = $2, workflow_confirmed = NULL WHERE id = $1 AND state = 'pending'`, [
        id,
        `workflow not started: ${(err as Error).message}`,
      ]);
      throw new HttpError(503, `cannot start the session workflow (Temporal unreachable?): ${(err as Error).message}`);
    }
    await pool.query('UPDATE sessions SET workflow_confirmed = true WHERE id = $1', [id]);
    return reply.status(201).send(present(await loadOwned(req, id), claims.role === 'admin'));
  });

  app.get<{ Querystring: { state?: string; platform?: string; user?: string; tag?: string } }>(
    '/api/v1/sessions',
    { ...auth, schema: { ...secured, querystring: ListQuery } },
    async (req) => {
      const claims = req.user!;
      const where: string[] = [];
      const args: unknown[] = [];
      const add = (sql: string, v: unknown) => {
        args.push(v);
        where.push(sql.replace('?', `$${args.length}`));
      };
      where.push(`s.state IS DISTINCT FROM 'deleted'`); // v1's soft delete: v1 hides these rows too
      if (claims.role !== 'admin') add('s.user_id = ?', claims.uid);
      else if (req.query.user) add('u.username = ?', req.query.user);
      if (req.query.state) add('s.state = ?', req.query.state);
      if (req.query.platform) add('s.platform = ?', req.query.platform);
      if (req.query.tag) add('s.tags @> ?::jsonb', JSON.stringify([req.query.tag]));
      const r = await app.deps.pool.query<SessionRow>(
        `${SELECT_SESSION} ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY s.created_at DESC LIMIT 5000`,
        args,
      );
      return r.rows.map((row) => present(row, claims.role === 'admin'));
    },
  );

  app.get<{ Params: { id: string } }>('/api/v1/sessions/:id', { ...auth, schema: { ...secured, params: IdParams } }, async (req) => {
    const row = await loadOwned(req, req.params.id);
    // Live progress from the workflow (which step, which agent) when it is still running.
    return { ...present(row, req.user!.role === 'admin'), ...(await liveStatus(row.id)) };
  });

  app.get<{ Params: { id: string } }>('/api/v1/sessions/:id/commands', { ...auth, schema: { ...secured, params: IdParams } }, async (req) => {
    await loadOwned(req, req.params.id);
    const r = await app.deps.pool.query(
      `SELECT c.id, c.command_type, c.status, c.error_message, c.retry_count, c.progress,
              c.created_at, c.sent_at, c.acked_at, c.completed_at, a.agent_id
         FROM agent_commands c LEFT JOIN agents a ON a.id = c.agent_id
        WHERE c.session_id = $1 ORDER BY c.created_at`,
      [req.params.id],
    );
    return r.rows;
  });

  type Op = 'hibernate' | 'wake' | 'stop';

  async function lifecycle(req: FastifyRequest<{ Params: { id: string }; Querystring: { wait?: number } }>, reply: FastifyReply, op: Op) {
    const admin = req.user!.role === 'admin';
    const row = await loadOwned(req, req.params.id);
    if (op === 'stop' && (row.state === 'terminated' || row.state === 'failed')) {
      // Nothing runs any more: a failed session's workflow already cleaned up after itself.
      if (row.state === 'failed')
        await app.deps.pool.query(`UPDATE sessions SET state = 'terminated', updated_at = NOW() WHERE id = $1 AND state = 'failed'`, [row.id]);
      return present(await loadOwned(req, row.id), admin);
    }
    const handle = app.deps.temporal.workflow.getHandle(sessionWorkflowId(row.id));
    // Accepted (validated, serialised) by the workflow, then waited on for at most `wait`
    // seconds: the request never hangs on an agent; 202 says the transition goes on.
    let outcome: 'done' | 'pending';
    try {
      const update = await withTimeout(
        acceptUpdate(handle, op),
        ACCEPT_TIMEOUT_MS,
        () => new HttpError(503, `the session workflow did not accept the ${op} request within ${ACCEPT_TIMEOUT_MS / 1000}s (is a worker running?)`),
      );
      const waitMs = (req.query.wait ?? DEFAULT_WAIT_S) * 1000;
      // The wait's timer is cleared as soon as the Update finishes (no timer left per request).
      const waited = new AbortController();
      outcome = await Promise.race([
        update.result().then(() => 'done' as const),
        sleep(waitMs, 'pending' as const, { signal: waited.signal }).catch(() => 'pending' as const),
      ]).finally(() => waited.abort());
    } catch (err) {
      if (err instanceof HttpError) throw err;
      const httpErr = err instanceof WorkflowClosed ? new HttpError(409, `cannot ${op}: the session is no longer managed`) : toHttpError(err, op, row.state);
      // The workflow finished meanwhile (e.g. it completed the stop in a workflow task that the
      // server made us re-send): the row tells whether the request got what it asked for.
      const now = await loadOwned(req, row.id);
      if (httpErr.statusCode === 409 && now.state === TARGET[op]) return present(now, admin);
      if (httpErr.statusCode === 409 && op === 'stop' && now.state === 'failed') {
        await app.deps.pool.query(`UPDATE sessions SET state = 'terminated', updated_at = NOW() WHERE id = $1 AND state = 'failed'`, [row.id]);
        return present(await loadOwned(req, row.id), admin);
      }
      throw httpErr;
    }
    const out: Record<string, unknown> = present(await loadOwned(req, row.id), admin);
    if (outcome === 'done') return out;
    const live = await liveStatus(row.id);
    return reply.status(202).send({ ...out, ...live });
  }

  /** The workflow's own view of a transition under way (which step, which agent). */
  async function liveStatus(id: string): Promise<{ transition: string | null; progress: string | null }> {
    try {
      // Bounded: a query waits for a worker (forever, for a closed workflow whose queue has none).
      const st = await withTimeout(
        app.deps.temporal.workflow.getHandle(sessionWorkflowId(id)).query(statusQuery),
        QUERY_TIMEOUT_MS,
        () => new Error('query timed out'),
      );
      return { transition: st.transition, progress: st.progress };
    } catch {
      return { transition: null, progress: null };
    }
  }

  const lifecycleSchema = { ...auth, schema: { ...secured, params: IdParams, querystring: WaitQuery } };
  type LifecycleRequest = { Params: { id: string }; Querystring: { wait?: number } };
  app.post<LifecycleRequest>('/api/v1/sessions/:id/hibernate', lifecycleSchema, (req, reply) => lifecycle(req, reply, 'hibernate'));
  app.post<LifecycleRequest>('/api/v1/sessions/:id/wake', lifecycleSchema, (req, reply) => lifecycle(req, reply, 'wake'));
  app.delete<LifecycleRequest>('/api/v1/sessions/:id', lifecycleSchema, (req, reply) => lifecycle(req, reply, 'stop'));
}

/**
 * Starts the Update and waits until the workflow accepted it. The server aborts an Update whose
 * workflow task failed before accepting it (e.g. a benign race with a new event, retried by the
 * SDK): it is sent again under the same update id, so it is never applied twice.
 */
async function acceptUpdate(handle: WorkflowHandle, op: 'hibernate' | 'wake' | 'stop') {
  const updateId = randomUUID();
  const def = { hibernate: hibernateUpdate, wake: wakeUpdate, stop: stopUpdate }[op];
  for (let attempt = 0; ; attempt++) {
    try {
      return await handle.startUpdate(def, { updateId, waitForStage: WorkflowUpdateStage.ACCEPTED });
    } catch (err) {
      const cause = err instanceof ServiceError ? (err.cause as { code?: number; details?: string } | undefined) : undefined;
      // gRPC ABORTED / UNAVAILABLE, or FAILED_PRECONDITION "... due to unexpected workflow task
      // failure": not accepted (or accepted in a workflow task that then failed, which the
      // server forgets); anything else is the answer.
      const retry = cause?.code === 10 || cause?.code === 14 || (cause?.code === 9 && /workflow task failure/i.test(cause.details ?? ''));
      if (!retry || attempt >= 50) throw err;
      // Sending an Update to a workflow that just closed takes the server seconds to refuse: see
      // whether the workflow closes (it may have completed the request in the failed task's retry).
      let status = (await handle.describe()).status;
      for (let i = 0; i < 10 && status.name === 'RUNNING'; i++) {
        await sleep(50);
        status = (await handle.describe()).status;
      }
      if (status.name !== 'RUNNING') throw new WorkflowClosed();
    }
  }
}

/** The workflow closed while an Update was being re-sent: its outcome is in the session row. */
class WorkflowClosed extends Error {}

function withTimeout<T>(p: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(onTimeout()), ms)))]).finally(() => clearTimeout(timer));
}

function toHttpError(err: unknown, op: string, state: string): HttpError {
  if (err instanceof WorkflowNotFoundError) return new HttpError(409, `cannot ${op}: the session is ${state} and no longer managed`);
  if (err instanceof WorkflowUpdateFailedError) {
    const cause = err.cause;
    if (cause instanceof ApplicationFailure) {
      if (cause.type === FailureType.InvalidTransition) return new HttpError(409, cause.message);
      return new HttpError(502, cause.message);
    }
    let inner: unknown = cause;
    while (inner && typeof inner === 'object' && 'cause' in inner && (inner as { cause?: unknown }).cause) inner = (inner as { cause: unknown }).cause;
    return new HttpError(502, `${op} failed: ${inner instanceof Error ? inner.message : String(inner)}`);
  }
  if (err instanceof Error && /workflow execution already completed/i.test(err.message))
    return new HttpError(409, `cannot ${op}: the session is ${state} and no longer managed`);
  const cause = err instanceof Error && err.cause instanceof Error ? ` (${err.cause.message})` : '';
  return new HttpError(503, `${op} could not reach the session workflow: ${err instanceof Error ? err.message : String(err)}${cause}`);
}
