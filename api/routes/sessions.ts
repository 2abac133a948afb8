/**
 * Sessions: database rows owned by one Temporal workflow each (`session/<id>`). Creating starts
 * the workflow; hibernate, wake and stop are Updates, so concurrent requests are serialised by
 * the workflow and never run twice. Users see their own sessions; admins see all.
 */
import { Type } from '@sinclair/typebox';
import { ServiceError, WorkflowHandle, WorkflowNotFoundError, WorkflowUpdateFailedError, WorkflowUpdateStage } from '@temporalio/client';
import { ApplicationFailure } from '@temporalio/common';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Pool } from 'pg';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { FailureType, hibernateUpdate, lifetimeChangedSignal, sessionWorkflowId, stopUpdate, wakeUpdate } from '../../workflows/session-api';
import { formatLifetime, parseLifetime } from '../../config/env';
import { sessionWorkflowSettings } from '../config';
import { startSessionWorkflow } from '../../activities/session-adoption';
import { ensureUser } from '../../db/users';
import { HttpError } from '../errors';
import { ListParams, listSessions, MAX_PAGE, presentSession as present, SELECT_SESSION, SESSION_SORTS, SessionRow } from '../sessions/view';
import { ErrorSchema, SessionSchema, USERNAME_PATTERN } from '../schemas';
import { nextGeneration } from '../../db/commands';
import {
  issueStartIn,
  issueStartWithSession,
  sendIssuedStart,
  startDataOrUndefined,
  StartNotIssued,
  withdrawFirstStart,
  type IssuedStart,
} from '../sessions/start-command';
import {
  checkLicense,
  checkUserQuota,
  inTransaction,
  LimitError,
  lockUserQuota,
  Queryable,
  Resources,
  sessionResources,
  templateResources,
} from '../../db/quota';

/** Per-session lifetime (v1's columns and formats); absent: the template's, else 30m / 8h. */
const LifetimeFields = {
  idle_timeout: Type.Optional(Type.String({ maxLength: 32, description: "hibernate after this long without keyboard/mouse input, e.g. 30m ('0': never)" })),
  max_session_duration: Type.Optional(Type.String({ maxLength: 32, description: "stop after running this long, e.g. 8h ('0': never)" })),
};
const PatchSession = Type.Object(LifetimeFields, { additionalProperties: false, minProperties: 1 });

/** A lifetime from a request: v1's duration format, between 5 seconds and 30 days (or 0 for never). */
function lifetimeParam(v: string | undefined, name: string): string | undefined {
  if (v === undefined) return undefined;
  let ms: number;
  try {
    ms = parseLifetime(v, name);
  } catch (err) {
    throw new HttpError(400, (err as Error).message);
  }
  if (ms !== 0 && (ms < 5000 || ms > 30 * 86_400_000)) throw new HttpError(400, `${name} must be between 5s and 30d, or 0 for never`);
  return formatLifetime(ms);
}

const CreateSession = Type.Object(
  {
    user: Type.Optional(Type.String({ pattern: USERNAME_PATTERN })),
    template: Type.String({ minLength: 1, maxLength: 255 }),
    platform: Type.Union([Type.Literal('docker'), Type.Literal('kubernetes')]),
    state: Type.Optional(Type.Literal('running', { description: 'desired state; sessions are created running' })),
    tags: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 63 }), { maxItems: 20 })),
    persistent_home: Type.Optional(Type.Boolean()),
    ...LifetimeFields,
  },
  { additionalProperties: false },
);
type CreateSession = {
  user?: string;
  template: string;
  platform: 'docker' | 'kubernetes';
  state?: 'running';
  tags?: string[];
  persistent_home?: boolean;
  idle_timeout?: string;
  max_session_duration?: string;
};

const ListQuery = Type.Object(
  {
    state: Type.Optional(Type.String({ maxLength: 50 })),
    platform: Type.Optional(Type.String({ maxLength: 50 })),
    user: Type.Optional(Type.String({ maxLength: 255 })),
    tag: Type.Optional(Type.String({ maxLength: 63 })),
    agent: Type.Optional(Type.String({ maxLength: 255 })),
    q: Type.Optional(Type.String({ maxLength: 255, description: 'id prefix, or part of the template, user or agent' })),
    sort: Type.Optional(
      Type.Union(
        SESSION_SORTS.map((k) => Type.Literal(k)),
        { description: 'default created_at' },
      ),
    ),
    order: Type.Optional(Type.Union([Type.Literal('asc'), Type.Literal('desc')], { description: 'default desc' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_PAGE, description: `page size (default ${MAX_PAGE})` })),
    cursor: Type.Optional(Type.String({ maxLength: 2048, description: 'the x-next-cursor of the previous page' })),
  },
  { additionalProperties: false },
);
/** What the list route accepts: the list's parameters, less the owner the route sets itself. */
type ListQuery = Omit<ListParams, 'ownerId'>;

const BulkBody = Type.Object(
  {
    action: Type.Union([Type.Literal('hibernate'), Type.Literal('wake'), Type.Literal('stop'), Type.Literal('retry')]),
    ids: Type.Array(Type.String({ minLength: 1, maxLength: 255 }), { minItems: 1, maxItems: 500, uniqueItems: true }),
  },
  { additionalProperties: false },
);
const BulkResult = Type.Object({
  results: Type.Array(
    Type.Object({
      id: Type.String(),
      ok: Type.Boolean(),
      status: Type.Integer({ description: 'what the single-session route would have answered' }),
      state: Type.Optional(Type.String()),
      transition: Type.Optional({ ...Type.String(), nullable: true }),
      error: Type.Optional(Type.String()),
    }),
  ),
});
/** How many sessions of one bulk request are handled at once. */
const BULK_PARALLEL = 8;

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 255 }) });

/** Hibernate, wake and stop answer within `wait` seconds: the final state (200) or the transition under way (202). */
const WaitQuery = Type.Object(
  { wait: Type.Optional(Type.Integer({ minimum: 0, maximum: 60, description: 'seconds to wait for the outcome (default 5)' })) },
  { additionalProperties: false },
);
const DEFAULT_WAIT_S = 5;
/** What a 202 says is under way. */
const TRANSITION_OF = { hibernate: 'hibernating', wake: 'waking', stop: 'stopping' } as const;
const TARGET = { hibernate: 'hibernated', wake: 'running', stop: 'terminated' } as const;
/** How long a workflow may take to accept an Update before the request fails with 503 (no worker?). */
const ACCEPT_TIMEOUT_MS = 10_000;

type Claims = NonNullable<FastifyRequest['user']>;
type Op = 'hibernate' | 'wake' | 'stop';

export async function sessionRoutes(app: FastifyInstance): Promise<void> {
  const auth = { onRequest: app.authenticate };
  const secured = { security: [{ bearer: [] }], tags: ['sessions'] };
  const errors = { 400: ErrorSchema, 401: ErrorSchema, 403: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema, 502: ErrorSchema, 503: ErrorSchema };
  const one = { 200: SessionSchema, 201: SessionSchema, 202: SessionSchema, ...errors };

  /**
   * Admits one more running session of `userId` (a create, or a retry of `sessionId`): under the
   * licence's and the user's advisory locks, counts what runs, refuses with 403 naming the limit
   * (db/quota.ts: licenses, user_quotas), else runs `write` in the same transaction and returns
   * what it returns. `write` is told whether the licence's lock is held (every create then waits
   * for this transaction). Wakes are admitted by the session workflow (activities/quota.ts), with
   * the same rules.
   */
  async function admit<T>(
    userId: string,
    need: Resources,
    sessionId: string | null,
    write: (tx: Queryable, held: { licence: boolean }) => Promise<T>,
  ): Promise<T> {
    try {
      return await inTransaction(app.deps.pool, async (tx) => {
        const { limits, licensesTable } = await lockUserQuota(tx, userId);
        const licence = await checkLicense(tx, 'sessions', licensesTable);
        await checkUserQuota(tx, userId, limits, need, sessionId);
        return write(tx, { licence });
      });
    } catch (err) {
      if (err instanceof LimitError) throw new HttpError(403, err.message);
      throw err;
    }
  }

  /** The id of a session's owner, created (within the licence's user limit) if it never logged in. */
  async function ownerIdFor(username: string): Promise<string> {
    const known = await app.deps.pool.query<{ id: string }>('SELECT id::text AS id FROM users WHERE username = $1', [username]);
    if (known.rows[0]) return known.rows[0].id;
    try {
      return await inTransaction(app.deps.pool, async (tx) => {
        await checkLicense(tx, 'users');
        return (await ensureUser(tx, { username })).id;
      });
    } catch (err) {
      if (err instanceof LimitError) throw new HttpError(403, err.message);
      throw err;
    }
  }

  async function loadOwned(claims: Claims, id: string, db: Pool = app.deps.pool): Promise<SessionRow> {
    const r = await db.query<SessionRow>(`${SELECT_SESSION} WHERE s.id = $1`, [id]);
    const row = r.rows[0];
    // Another user's session is reported exactly like a missing one: ids are not disclosed.
    if (!row || (claims.role !== 'admin' && row.user_id !== claims.uid)) throw new HttpError(404, `session "${id}" not found`);
    return row;
  }

  app.post<{ Body: CreateSession }>('/api/v1/sessions', { ...auth, schema: { ...secured, body: CreateSession, response: one } }, async (req, reply) => {
    const { pool, temporal, config } = app.deps;
    const claims = req.user!;
    const owner = req.body.user ?? claims.sub;
    if (owner !== claims.sub && claims.role !== 'admin') throw new HttpError(403, 'only admins create sessions for other users');
    const tpl = await pool.query<{ manifest: Record<string, any> | null }>('SELECT manifest FROM template_catalog WHERE name = $1', [req.body.template]);
    if (!tpl.rowCount) throw new HttpError(400, `unknown template "${req.body.template}" (GET /api/v1/templates lists them)`);
    // The session's own limits, else the template's (spec.idleTimeout / spec.maxSessionDuration), else 30m / 8h.
    const spec = (tpl.rows[0].manifest?.spec ?? tpl.rows[0].manifest?.Spec ?? tpl.rows[0].manifest ?? {}) as Record<string, unknown>;
    const fromTemplate = (k: string) => (typeof spec[k] === 'string' ? (spec[k] as string) : undefined);
    const idleTimeout = lifetimeParam(req.body.idle_timeout, 'idle_timeout') ?? fromTemplate('idleTimeout') ?? '30m';
    const maxDuration = lifetimeParam(req.body.max_session_duration, 'max_session_duration') ?? fromTemplate('maxSessionDuration') ?? '8h';
    // Admins may create sessions for users that have not logged in yet (as the spec's examples do).
    const ownerId = owner === claims.sub ? claims.uid : await ownerIdFor(owner);

    const id = randomUUID();
    const workflowId = sessionWorkflowId(id);
    // workflow_confirmed = false until the workflow is known to exist: if this pod dies in
    // between, the session reaper (api/sessions/reaper.ts) starts it.
    // Licence and quota are checked and the row written in one transaction (see admit()).
    const startDeadline = Date.now() + config.sessionStartTimeoutMs;
    // The template's resources from the manifest read above (db/quota.ts templateResources reads the same).
    const need = sessionResources({ manifest: tpl.rows[0].manifest });
    const insertRow = (tx: Queryable) =>
      tx.query(
        `INSERT INTO sessions (id, user_id, template_name, state, platform, tags, persistent_home, workflow_id, namespace, workflow_confirmed,
                             idle_timeout, max_session_duration)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, NULL, false, $8, $9)`,
        [
          id,
          ownerId,
          req.body.template,
          req.body.platform,
          JSON.stringify(req.body.tags ?? []),
          req.body.persistent_home ?? true,
          workflowId,
          idleTimeout,
          maxDuration,
        ],
      );
    // The agent gets the start command when the row commits, if one can take it
    // (api/sessions/start-command.ts). Its payload and resources come from what this request read
    // already (the template, the owner).
    const placement = { heartbeatTimeoutMs: config.heartbeatTimeoutMs };
    const start = {
      sessionId: id,
      platform: req.body.platform,
      deadline: startDeadline,
      need,
      start: startDataOrUndefined({
        username: owner,
        user_id: ownerId,
        template_name: req.body.template,
        persistent_home: req.body.persistent_home ?? true,
        home_volume: null,
        manifest: tpl.rows[0].manifest,
      }),
    };
    // undefined: not tried with the row (a licence's lock was held, or the fast path is off);
    // null: no agent took it now.
    let issued: IssuedStart | null | undefined;
    try {
      issued = await admit(ownerId, need, null, async (tx, held) => {
        await insertRow(tx);
        return config.issueStartOnCreate && !held.licence ? issueStartIn(tx, placement, start, app.deps.agentGateway) : undefined;
      });
    } catch (err) {
      if (!(err instanceof StartNotIssued)) throw err;
      // Rolled back: the session is written without it, and its workflow places it.
      app.deps.log.warn('start not issued with the session; its workflow places it', { session: id, err: err.reason.message });
      issued = null;
      await admit(ownerId, need, null, insertRow);
    }
    const placedOn =
      issued !== undefined
        ? sendIssuedStart(issued, app.deps.agentGateway)
        : config.issueStartOnCreate
          ? await issueStartWithSession(pool, placement, start, app.deps.log, app.deps.agentGateway)
          : null;
    try {
      await startSessionWorkflow(sessionWorkflowSettings(config, temporal), {
        sessionId: id,
        user: owner,
        template: req.body.template,
        platform: req.body.platform,
        placedOn: placedOn ?? undefined,
      });
    } catch (err) {
      await pool.query(`UPDATE sessions SET state = 'failed', error_message = $2, workflow_confirmed = NULL WHERE id = $1 AND state = 'pending'`, [
        id,
        `workflow not started: ${(err as Error).message}`,
      ]);
      if (placedOn)
        await withdrawFirstStart(pool, id, 'the session workflow could not be started').catch((e: Error) =>
          app.deps.log.warn('cannot withdraw the start issued with a session whose workflow did not start; its deadline expires it', {
            session: id,
            err: e.message,
          }),
        );
      throw new HttpError(503, `cannot start the session workflow (Temporal unreachable?): ${(err as Error).message}`);
    }
    await pool.query('UPDATE sessions SET workflow_confirmed = true WHERE id = $1', [id]);
    return reply.status(201).send(present(await loadOwned(claims, id), claims.role === 'admin'));
  });

  // The spec's plain array, searched, filtered, sorted and paged in the database (keyset paging:
  // x-next-cursor). x-total-count counts every matching row, not just this page.
  app.get<{ Querystring: ListQuery }>(
    '/api/v1/sessions',
    {
      ...auth,
      schema: {
        ...secured,
        querystring: ListQuery,
        response: {
          200: {
            ...Type.Array(SessionSchema),
            headers: {
              'x-total-count': Type.Integer({ description: 'sessions matching the filters, on all pages' }),
              'x-next-cursor': Type.String({ description: "the next page's cursor; absent on the last page" }),
            },
          },
          400: ErrorSchema,
          401: ErrorSchema,
        },
      },
    },
    async (req, reply) => {
      const claims = req.user!;
      const admin = claims.role === 'admin';
      const page = await listSessions(app.deps.readPool, { ...req.query, ...(admin ? {} : { ownerId: claims.uid, user: undefined }) });
      void reply.header('x-total-count', String(page.total));
      if (page.next) {
        const q = new URLSearchParams(req.query as Record<string, string>);
        q.set('cursor', page.next);
        void reply.header('x-next-cursor', page.next).header('link', `</api/v1/sessions?${q.toString()}>; rel="next"`);
      }
      return page.rows.map((row) => present(row, admin));
    },
  );

  app.get<{ Params: { id: string } }>('/api/v1/sessions/:id', { ...auth, schema: { ...secured, params: IdParams, response: one } }, async (req) => {
    // One SELECT: the transition and its progress come from the session's open command, not from
    // a Temporal query (which needs a worker and, for an evicted workflow, a replay).
    return present(await loadOwned(req.user!, req.params.id, app.deps.readPool), req.user!.role === 'admin');
  });

  app.get<{ Params: { id: string } }>('/api/v1/sessions/:id/commands', { ...auth, schema: { ...secured, params: IdParams } }, async (req) => {
    await loadOwned(req.user!, req.params.id);
    const r = await app.deps.pool.query(
      `SELECT c.id, c.command_type, c.status, c.error_message, c.retry_count, c.progress,
              c.created_at, c.sent_at, c.acked_at, c.completed_at, a.agent_id
         FROM agent_commands c LEFT JOIN agents a ON a.id = c.agent_id
        WHERE c.session_id = $1 ORDER BY c.created_at`,
      [req.params.id],
    );
    return r.rows;
  });

  /** Marks a failed session terminated (nothing runs any more: its workflow cleaned up after itself). */
  async function closeFailed(id: string): Promise<void> {
    await app.deps.pool.query(`UPDATE sessions SET state = 'terminated', updated_at = NOW() WHERE id = $1 AND state = 'failed'`, [id]);
  }

  /**
   * Hibernate, wake or stop one session: accepted by its workflow (serialised, never run twice),
   * then waited on for at most `waitMs`. 200 with the final state, or 202 with the transition.
   */
  async function operate(claims: Claims, id: string, op: Op, waitMs: number): Promise<{ status: 200 | 202; body: Record<string, unknown> }> {
    const admin = claims.role === 'admin';
    const row = await loadOwned(claims, id);
    if (op === 'stop' && (row.state === 'terminated' || row.state === 'failed')) {
      if (row.state === 'failed') await closeFailed(row.id);
      return { status: 200, body: present(await loadOwned(claims, row.id), admin) };
    }
    const handle = app.deps.temporal.workflow.getHandle(sessionWorkflowId(row.id));
    let outcome: 'done' | 'pending';
    try {
      const update = await withTimeout(
        acceptUpdate(handle, op),
        ACCEPT_TIMEOUT_MS,
        () => new HttpError(503, `the session workflow did not accept the ${op} request within ${ACCEPT_TIMEOUT_MS / 1000}s (is a worker running?)`),
      );
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
      const now = await loadOwned(claims, row.id);
      if (httpErr.statusCode === 409 && now.state === TARGET[op]) return { status: 200, body: present(now, admin) };
      if (httpErr.statusCode === 409 && op === 'stop' && now.state === 'failed') {
        await closeFailed(row.id);
        return { status: 200, body: present(await loadOwned(claims, row.id), admin) };
      }
      throw httpErr;
    }
    const out = present(await loadOwned(claims, row.id), admin);
    if (outcome === 'done') return { status: 200, body: out };
    // Accepted and under way: before the command row exists, the row shows no transition yet.
    return { status: 202, body: out.transition ? out : { ...out, transition: TRANSITION_OF[op] } };
  }

  /**
   * Starts a failed session again: same id, a new workflow run whose command numbering goes on
   * from the old one's. Only one retry wins (the row moves failed → pending atomically).
   */
  async function retry(claims: Claims, id: string): Promise<{ status: 202; body: Record<string, unknown> }> {
    const { pool, temporal, config } = app.deps;
    const row = await loadOwned(claims, id);
    if (row.state !== 'failed') throw new HttpError(409, `cannot retry a session that is ${row.state} (only failed sessions are retried)`);
    if (!row.platform || (row.platform !== 'docker' && row.platform !== 'kubernetes'))
      throw new HttpError(409, `cannot retry: the session has no platform v2 manages (${row.platform ?? 'none'})`);
    const claimed = await admit(row.user_id, sessionResources(await templateResources(pool, row.template_name)), id, (tx) =>
      tx.query(
        `UPDATE sessions SET state = 'pending', error_message = NULL, agent_id = NULL, workflow_confirmed = false, updated_at = NOW()
          WHERE id = $1 AND state = 'failed'`,
        [id],
      ),
    );
    if (!claimed.rowCount) throw new HttpError(409, 'cannot retry: the session changed meanwhile');
    try {
      const started = await startSessionWorkflow(sessionWorkflowSettings(config, temporal), {
        sessionId: id,
        user: row.username ?? row.user_id,
        template: row.template_name,
        platform: row.platform,
        firstCommandSeq: (await nextGeneration(pool, id)) - 1,
      });
      if (!started) throw new HttpError(409, 'cannot retry yet: the failed run is still cleaning up; try again in a few seconds');
    } catch (err) {
      await pool.query(`UPDATE sessions SET state = 'failed', error_message = $2, workflow_confirmed = NULL WHERE id = $1 AND state = 'pending'`, [
        id,
        row.error_message,
      ]);
      if (err instanceof HttpError) throw err;
      throw new HttpError(503, `cannot start the session workflow (Temporal unreachable?): ${(err as Error).message}`);
    }
    await pool.query('UPDATE sessions SET workflow_confirmed = true WHERE id = $1', [id]);
    app.deps.log.info('failed session retried', { session: id, by: claims.sub });
    return { status: 202, body: present(await loadOwned(claims, id), claims.role === 'admin') };
  }

  /** The workflow's own view of a transition under way (which step, which agent). */
  const lifecycleSchema = { ...auth, schema: { ...secured, params: IdParams, querystring: WaitQuery, response: one } };
  type LifecycleRequest = { Params: { id: string }; Querystring: { wait?: number } };
  const lifecycle = (op: Op) => async (req: FastifyRequest<LifecycleRequest>, reply: FastifyReply) => {
    const r = await operate(req.user!, req.params.id, op, (req.query.wait ?? DEFAULT_WAIT_S) * 1000);
    return reply.status(r.status).send(r.body);
  };
  app.post<LifecycleRequest>('/api/v1/sessions/:id/hibernate', lifecycleSchema, lifecycle('hibernate'));
  app.post<LifecycleRequest>('/api/v1/sessions/:id/wake', lifecycleSchema, lifecycle('wake'));
  app.delete<LifecycleRequest>('/api/v1/sessions/:id', lifecycleSchema, lifecycle('stop'));
  // Change a session's idle timeout or maximum duration; its workflow re-plans its timers at once.
  app.patch<{ Params: { id: string }; Body: { idle_timeout?: string; max_session_duration?: string } }>(
    '/api/v1/sessions/:id',
    { ...auth, schema: { ...secured, params: IdParams, body: PatchSession, response: one } },
    async (req) => {
      const claims = req.user!;
      const row = await loadOwned(claims, req.params.id);
      const idle = lifetimeParam(req.body.idle_timeout, 'idle_timeout');
      const max = lifetimeParam(req.body.max_session_duration, 'max_session_duration');
      await app.deps.pool.query(
        `UPDATE sessions SET idle_timeout = COALESCE($2, idle_timeout), max_session_duration = COALESCE($3, max_session_duration), updated_at = NOW() WHERE id = $1`,
        [row.id, idle ?? null, max ?? null],
      );
      await app.deps.temporal.workflow
        .getHandle(sessionWorkflowId(row.id))
        .signal(lifetimeChangedSignal)
        .catch(() => undefined); // no workflow (terminated, or a v1 row): the row is all there is
      return present(await loadOwned(claims, row.id), claims.role === 'admin');
    },
  );

  app.post<{ Params: { id: string } }>(
    '/api/v1/sessions/:id/retry',
    { ...auth, schema: { ...secured, params: IdParams, response: one } },
    async (req, reply) => {
      const r = await retry(req.user!, req.params.id);
      return reply.status(r.status).send(r.body);
    },
  );

  // Many sessions at once (the console's bulk actions): each id on its own, with the answer the
  // single-session route would have given; a refused one does not stop the others.
  app.post<{ Body: { action: Op | 'retry'; ids: string[] } }>(
    '/api/v1/sessions/bulk',
    { ...auth, schema: { ...secured, body: BulkBody, response: { 200: BulkResult, 400: ErrorSchema, 401: ErrorSchema } } },
    async (req) => {
      const claims = req.user!;
      const { action, ids } = req.body;
      const results: Array<Record<string, unknown>> = new Array(ids.length);
      let next = 0;
      const worker = async () => {
        for (let i = next++; i < ids.length; i = next++) {
          const id = ids[i];
          try {
            const r = action === 'retry' ? await retry(claims, id) : await operate(claims, id, action, 0);
            results[i] = { id, ok: true, status: r.status, state: r.body.state, transition: (r.body.transition as string | null) ?? null };
          } catch (err) {
            const status = err instanceof HttpError ? err.statusCode : 500;
            results[i] = { id, ok: false, status, error: status >= 500 && !(err instanceof HttpError) ? 'internal error' : (err as Error).message };
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(BULK_PARALLEL, ids.length) }, worker));
      app.deps.log.info('bulk session action', { action, count: ids.length, ok: results.filter((r) => r.ok).length, by: claims.sub });
      return { results };
    },
  );
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
      if (cause.type === FailureType.QuotaExceeded) return new HttpError(403, cause.message);
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
