/**
 * Session activities: every one idempotent, so Temporal may retry any of them after a worker,
 * database or agent fault without a second container or a lost command.
 */
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import type { Pool, PoolClient } from 'pg';
import {
  CHANNEL_COMMAND_PENDING,
  CommandRow,
  ensureCommand,
  getCommand,
  nextGeneration,
  requeueCommand,
  withdrawCommand,
  WithdrawResult,
} from '../db/commands';
import type { CommandResult, CommandType, Platform, StartSessionData } from '../protocol/messages';
import { FailureType, SessionState, WITHDRAWN_BY_STOP } from '../workflows/session-api';
import { placementWhenFull } from '../config/env';
import type { CommandWaiter } from './command-waiter';
import { InvalidTemplateError, manifestSpec, templateToSpec } from './templates';
import { formatCpu, formatMemory, releaseReservation, sessionResources } from '../db/quota';
import { createQuotaActivities } from './quota';
import { writeSystemAudit } from './audit';
import { createLifetimeActivities, type SessionLifetime } from './session-lifetime';

export interface SessionActivityDeps {
  pool: Pool;
  /** For what must not fail an activity but should be seen (an audit entry not written). */
  log?: Pick<import('../config/log').Logger, 'warn'>;
  waiter: CommandWaiter;
  /** An agent whose last heartbeat is older than this is not placed on (AGENT_HEARTBEAT_TIMEOUT). */
  heartbeatTimeoutMs: number;
  /** How often a waiting activity re-reads the command row and heartbeats. */
  pollIntervalMs?: number;
  /** When every agent of the platform is full: keep the start queued (retry until its timeout) or fail it at once. */
  whenFull?: 'queue' | 'fail';
  /** The worker's metrics (workers/metrics.ts); absent in tools that run activities directly. */
  metrics?: SessionMetrics;
  /**
   * Bench-only (STREAMSPACE_BENCH_LEGACY_DISPATCH, set by bench/dispatch.ts for its "before"
   * stack): the dispatch path as it was before issue 14, so the bench compares both in one run.
   * placeAndIssue then only places (the command is issued by dispatchCommand), and dispatchCommand
   * spends its former statements (INSERT, then NOTIFY, then a read before the first wait).
   */
  legacyDispatch?: boolean;
}

type Labels = Record<string, string>;
/** The part of the worker's prom-client metrics the session activities move. */
export interface SessionMetrics {
  sessionStart: { observe(labels: Labels, seconds: number): void };
  sessionFailures: { inc(labels: Labels): void };
  reconcileRepairs: { inc(labels: Labels): void };
}

export interface PlaceInput {
  sessionId: string;
  platform: Platform;
}
export interface Placement {
  agentDbId: string;
  agentId: string;
}
export interface DispatchInput {
  sessionId: string;
  agentDbId: string;
  commandType: CommandType;
  idempotencyKey: string;
  /** The session's command sequence number: agents refuse anything older than what they acted on. */
  generation: number;
  /** Epoch ms: never delivered nor started after it. */
  deadline: number;
  /** placeAndIssue already issued it: the first attempt finds it queued and only waits (no re-queue). */
  preIssued?: boolean;
  /**
   * Once the agent completed the command (before its deadline), write the session's new state
   * here, as recordSessionState would (a running one with the result's platform metadata and VNC
   * address), and with `lifetime` read the session's limits for its timers: the workflow's next
   * task then needs no local activity of its own. Idempotent like the rest: a retry writes the same.
   */
  then?: { state: SessionState; platform: Platform; lifetime?: boolean };
}
/** dispatchCommand's answer: the agent's result, and what `then` recorded. */
export type DispatchResult = CommandResult & { recorded?: { lifetime: SessionLifetime | null } };
export interface PlaceAndIssueInput extends PlaceInput {
  /** What the session row says while the command runs (pending for a first start). */
  interim: SessionState;
  /** The start_session command issued, in the same transaction, to the agent chosen. */
  command: { idempotencyKey: string; generation: number; deadline: number };
}
export interface PlacedAndIssued extends Placement {
  /** The command is in the agent's queue (and the gateway notified): dispatchCommand only waits for its outcome. */
  issued: boolean;
}
export interface WithdrawInput {
  idempotencyKey: string;
  reason: string;
}
export interface SessionEventInput {
  sessionId: string;
  platform: Platform;
  event: 'failed' | 'repair';
  /** failure class (start_timeout, start_failed, no_capacity, reconcile, ...) or repair action */
  detail: string;
}
export interface RecordStateInput {
  sessionId: string;
  state: SessionState;
  agentDbId: string | null;
  platformMetadata?: Record<string, unknown>;
  error: string | null;
  /** The session is on no agent any more (its placement is forgotten). */
  clearAgent?: boolean;
  /** For the session-start histogram. */
  platform?: Platform;
}

export type SessionActivities = ReturnType<typeof createSessionActivities>;

/** Agents locked and counted per placement in a large fleet (see placeIn). */
const PLACEMENT_SAMPLE = 4;
/** Up to this many online agents a placement considers them all. */
const PLACEMENT_FULL_SCAN = 8;

export function createSessionActivities(deps: SessionActivityDeps) {
  const { pool, waiter } = deps;
  const pollMs = deps.pollIntervalMs ?? 1000;
  const whenFull = deps.whenFull ?? placementWhenFull();
  // Bench-only switch (see SessionActivityDeps.legacyDispatch); never set outside bench/dispatch.ts.
  deps = { ...deps, legacyDispatch: deps.legacyDispatch ?? process.env.STREAMSPACE_BENCH_LEGACY_DISPATCH === 'true' };

  /** A wake or start that failed for good: its owner's quota reservation ends (activities/quota.ts). */
  async function releaseAfter(input: DispatchInput): Promise<void> {
    if (input.commandType === 'wake_session' || input.commandType === 'start_session') await releaseReservation(pool, input.sessionId);
  }

  async function loadStartData(sessionId: string): Promise<StartSessionData> {
    const r = await pool.query<{
      username: string | null;
      user_id: string;
      template_name: string;
      persistent_home: boolean | null;
      home_volume: string | null;
      manifest: unknown;
    }>(
      `SELECT u.username, s.user_id, s.template_name, s.persistent_home, s.platform_metadata->>'home_volume' AS home_volume, t.manifest
         FROM sessions s
         LEFT JOIN users u ON u.id::text = s.user_id
         LEFT JOIN template_catalog t ON t.name = s.template_name
        WHERE s.id = $1`,
      [sessionId],
    );
    const row = r.rows[0];
    if (!row) throw ApplicationFailure.nonRetryable(`session ${sessionId} does not exist`, FailureType.InvalidTemplate);
    if (!row.manifest) throw ApplicationFailure.nonRetryable(`template "${row.template_name}" does not exist`, FailureType.InvalidTemplate);
    try {
      return {
        user: row.username ?? row.user_id,
        template: templateToSpec(row.template_name, manifestSpec(row.manifest)),
        persistent_home: row.persistent_home !== false,
        // Imported v1 sessions keep the home volume v1 gave them (home-<user>).
        ...(row.home_volume ? { home_volume: row.home_volume } : {}),
      };
    } catch (err) {
      if (err instanceof InvalidTemplateError) throw ApplicationFailure.nonRetryable(err.message, FailureType.InvalidTemplate);
      throw err;
    }
  }

  async function recordSessionState(input: RecordStateInput): Promise<void> {
    // A wake's quota reservation ends with its outcome: running (counted as such from now on),
    // or the failed wake's hibernated-with-error; any other state also ends it.
    const release = input.state !== 'hibernated' || input.error !== null;
    const r = await pool.query<{ was: string | null; created_at: Date }>(
      // (In the same statement: one round trip. Legacy, for the bench's "before": a second one.)
      `WITH ${deps.legacyDispatch ? '' : 'released AS (DELETE FROM quota_reservations WHERE session_id = $1 AND $7::boolean),'}
            old AS (SELECT id, state FROM sessions WHERE id = $1 FOR UPDATE)
       UPDATE sessions s
          SET state = $2::varchar,
              agent_id = CASE WHEN $6::boolean THEN NULL ELSE COALESCE($3, s.agent_id) END,
              platform_metadata = COALESCE(s.platform_metadata, '{}'::jsonb) || COALESCE($4::jsonb, '{}'::jsonb),
              error_message = $5,
              -- The idle and duration clocks start when the session (re)starts running.
              running_since = CASE WHEN $2::varchar <> 'running' THEN NULL
                                   WHEN old.state IS DISTINCT FROM 'running' OR s.running_since IS NULL THEN NOW()
                                   ELSE s.running_since END,
              updated_at = NOW()
         FROM old WHERE s.id = old.id
       RETURNING old.state AS was, s.created_at`,
      [
        input.sessionId,
        input.state,
        input.agentDbId,
        input.platformMetadata ?? null,
        input.error,
        input.clearAgent === true,
        ...(deps.legacyDispatch ? [] : [release]),
      ],
    );
    if (release && deps.legacyDispatch) await releaseReservation(pool, input.sessionId);
    const row = r.rows[0];
    if (row && input.state === 'running' && row.was === 'pending' && input.platform)
      deps.metrics?.sessionStart.observe({ platform: input.platform }, Math.max(0, (Date.now() - row.created_at.getTime()) / 1000));
  }

  /** dispatchCommand's `then`: the session's state after the completed command (see DispatchInput). */
  async function recordOutcome(input: DispatchInput, result: CommandResult): Promise<DispatchResult> {
    const then = input.then;
    // (Legacy, for the bench's "before": the workflow writes it, with a local activity of its own.)
    if (!then || deps.legacyDispatch || Date.now() > input.deadline) return result;
    // A late outcome (the workflow gave up on this command: withdrawn, or a newer command such as a
    // stop was issued since) must not overwrite what the workflow decided: it is left to the
    // workflow, which writes its own state when the result is not `recorded`.
    const superseded = await pool.query(
      `SELECT 1 FROM agent_commands WHERE session_id = $1 AND (generation > $2 OR (idempotency_key = $3 AND withdrawn_at IS NOT NULL)) LIMIT 1`,
      [input.sessionId, input.generation, input.idempotencyKey],
    );
    if (superseded.rowCount) return result;
    await recordSessionState({
      sessionId: input.sessionId,
      state: then.state,
      agentDbId: input.agentDbId,
      platformMetadata: then.state === 'running' ? { ...(result.platform_metadata ?? {}), vnc: result.vnc ?? null } : undefined,
      error: null,
      platform: then.platform,
    });
    return { ...result, recorded: { lifetime: then.lifetime ? await lifetimeOf(input.sessionId) : null } };
  }
  const lifetimeOf = createLifetimeActivities({ pool }).sessionLifetime;

  /**
   * Chooses an online agent of the platform with free capacity, inside the caller's transaction
   * (BEGIN done; the caller commits, or rolls back on a throw), and records it on the session. The
   * candidate agents are locked FOR NO KEY UPDATE: concurrent placements serialise on them and
   * cannot overfill an agent, while commands for sessions already there (their INSERT takes FOR KEY
   * SHARE on the agent through the foreign key) go on meanwhile. Idempotent: a session already
   * placed on an online agent keeps it. With `interim`, the same statement also writes the
   * session's state as recordSessionState would (state, agent, no error, the running clock).
   */
  async function placeIn(client: PoolClient, sessionId: string, platform: Platform, interim?: SessionState): Promise<Placement> {
    const fresh = `a.status = 'online' AND a.last_heartbeat > NOW() - ($2::int * INTERVAL '1 millisecond')`;
    // Written as recordSessionState(interim) writes it (its quota reservation ends unless hibernated).
    const assign = (agentDbId: string) =>
      interim === undefined
        ? client.query('UPDATE sessions SET agent_id = $2, updated_at = NOW() WHERE id = $1', [sessionId, agentDbId])
        : client.query(
            `WITH released AS (DELETE FROM quota_reservations WHERE session_id = $1 AND $4::boolean)
             UPDATE sessions
                SET state = $3::varchar, agent_id = $2, error_message = NULL,
                    running_since = CASE WHEN $3::varchar <> 'running' THEN NULL
                                         WHEN state IS DISTINCT FROM 'running' OR running_since IS NULL THEN NOW()
                                         ELSE running_since END,
                    updated_at = NOW()
              WHERE id = $1`,
            [sessionId, agentDbId, interim, interim !== 'hibernated'],
          );
    const current = await client.query<{ id: string; agent_id: string }>(
      `SELECT a.id, a.agent_id FROM sessions s JOIN agents a ON a.id = s.agent_id
        WHERE s.id = $1 AND a.platform = $3 AND ${fresh}`,
      [sessionId, deps.heartbeatTimeoutMs, platform],
    );
    if (current.rows[0]) {
      if (interim !== undefined) await assign(current.rows[0].id);
      return { agentDbId: current.rows[0].id, agentId: current.rows[0].agent_id };
    }
    // What this session needs (its own row: no lock needed, read before the agents are locked).
    const mine = await client.query<{ cpu: string | null; memory: string | null; manifest: unknown }>(
      `SELECT s.cpu, s.memory, t.manifest FROM sessions s LEFT JOIN template_catalog t ON t.name = s.template_name WHERE s.id = $1`,
      [sessionId],
    );
    const need = mine.rows[0] ? sessionResources(mine.rows[0]) : { cpu: 0, memory: 0 };
    // A large fleet: a few random online agents are locked and counted first (the power of d
    // choices keeps the load even), so a placement costs the same with 1,000 agents and 10,000
    // sessions as with 3 (it used to lock every agent and read every session); all of them only
    // when none of the sample has room. A small fleet (≤ PLACEMENT_FULL_SCAN agents) is always
    // placed on its least used agent.
    const sample = await client.query<{ id: string; total: string }>(
      `SELECT a.id, count(*) OVER () AS total FROM agents a WHERE a.platform = $1 AND ${fresh} ORDER BY random() LIMIT ${PLACEMENT_SAMPLE}`,
      [platform, deps.heartbeatTimeoutMs],
    );
    if (Number(sample.rows[0]?.total ?? 0) > PLACEMENT_FULL_SCAN) {
      // The sample's locks are let go before all agents are locked in id order (no deadlock).
      await client.query('SAVEPOINT placement_sample');
      const r = await placeAmong(sample.rows.map((x) => x.id));
      if (r.placed) return r.placed;
      await client.query('ROLLBACK TO SAVEPOINT placement_sample');
    }
    const all = await placeAmong(null);
    if (all.placed) return all.placed;
    const { count, withUse } = all;
    const bySessions = withUse.filter((c) => c.use.n < c.max);
    const resources =
      bySessions.length > 0
        ? ` (${bySessions.map((c) => `${c.agent_id}: cpu ${formatCpu(c.use.cpu)}${c.max_cpu !== null ? ` of ${formatCpu(Math.round(c.max_cpu * 1000))}` : ''}, memory ${formatMemory(c.use.memory)}${c.max_memory !== null ? ` of ${formatMemory(Math.round(c.max_memory * 2 ** 30))}` : ''}`).join('; ')}; this session needs cpu ${formatCpu(need.cpu)}, memory ${formatMemory(need.memory)})`
        : '';
    const why = count
      ? bySessions.length
        ? `no capacity: no online ${platform} agent has the CPU or memory left (MAX_CPU/MAX_MEMORY)${resources}`
        : `no capacity: all ${count} online ${platform} agent(s) are full`
      : `no ${platform} agent is online`;
    if (count && whenFull === 'fail') throw ApplicationFailure.nonRetryable(`cannot place session: ${why}`, FailureType.NoCapacity);
    // Retryable: the workflow keeps trying until an agent has room or the start times out.
    throw ApplicationFailure.retryable(`cannot place session: ${why}`, FailureType.NoAgentAvailable);

    /** Places on the least used of `ids` (null: every online agent of the platform) that has room. */
    async function placeAmong(ids: string[] | null) {
      // Lock the candidate agents first, then count in a new statement: in READ COMMITTED that
      // statement sees every placement committed while this one waited for the locks, so
      // concurrent placements cannot overfill an agent.
      const candidates = await client.query<{ id: string; agent_id: string; max: number; max_cpu: number | null; max_memory: number | null }>(
        `SELECT a.id, a.agent_id, COALESCE((a.capacity->>'max_sessions')::int, 0) AS max,
                (a.capacity->>'max_cpu')::float8 AS max_cpu, (a.capacity->>'max_memory')::float8 AS max_memory
           FROM agents a
          WHERE a.platform = $1 AND ${fresh} AND ($3::uuid[] IS NULL OR a.id = ANY($3::uuid[]))
          ORDER BY a.id
            FOR NO KEY UPDATE OF a`,
        [platform, deps.heartbeatTimeoutMs, ids],
      );
      // Sessions, CPU and memory in use on each candidate (MAX_SESSIONS, MAX_CPU cores and
      // MAX_MEMORY GiB as the agent reported them): a session's resources are its own cpu/memory,
      // else its template's defaultResources.
      const used = await client.query<{ agent_id: string; cpu: string | null; memory: string | null; manifest: unknown }>(
        `SELECT s.agent_id::text AS agent_id, s.cpu, s.memory, t.manifest
           FROM sessions s LEFT JOIN template_catalog t ON t.name = s.template_name
          WHERE s.agent_id = ANY($1::uuid[]) AND s.state IN ('pending', 'running', 'terminating') AND s.id <> $2`,
        [candidates.rows.map((c) => c.id), sessionId],
      );
      const usedBy = new Map<string, { n: number; cpu: number; memory: number }>();
      for (const u of used.rows) {
        const acc = usedBy.get(u.agent_id) ?? { n: 0, cpu: 0, memory: 0 };
        const res = sessionResources(u);
        usedBy.set(u.agent_id, { n: acc.n + 1, cpu: acc.cpu + res.cpu, memory: acc.memory + res.memory });
      }
      const fits = (c: { id: string; max_cpu: number | null; max_memory: number | null }, u: { cpu: number; memory: number }) =>
        (c.max_cpu === null || u.cpu + need.cpu <= Math.round(c.max_cpu * 1000)) &&
        (c.max_memory === null || u.memory + need.memory <= Math.round(c.max_memory * 2 ** 30));
      const withUse = candidates.rows.map((c) => ({ ...c, use: usedBy.get(c.id) ?? { n: 0, cpu: 0, memory: 0 } }));
      const chosen = withUse.filter((c) => c.use.n < c.max && fits(c, c.use)).sort((a, b) => a.use.n / a.max - b.use.n / b.max)[0];
      if (!chosen) return { placed: null, count: candidates.rowCount ?? 0, withUse };
      await assign(chosen.id);
      return { placed: { agentDbId: chosen.id, agentId: chosen.agent_id } as Placement, count: candidates.rowCount ?? 0, withUse };
    }
  }

  async function inTransaction<T>(fn: (client: PoolClient) => Promise<T>): Promise<T> {
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const out = await fn(client);
      await client.query('COMMIT');
      return out;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }

  async function placeSession({ sessionId, platform }: PlaceInput): Promise<Placement> {
    await loadStartData(sessionId); // a bad template fails now, before any agent acts
    return inTransaction((client) => placeIn(client, sessionId, platform));
  }

  return {
    ...createQuotaActivities({ pool }),

    /**
     * Chooses an online agent of the platform with free capacity and records it on the session,
     * under a row lock so concurrent placements cannot overfill an agent. Idempotent: a session
     * already placed on an online agent keeps it. (The start path of workflows begun before
     * placeAndIssue existed.)
     */
    placeSession,

    /**
     * A start in one local activity and one transaction: places the session (as placeSession),
     * writes its interim state (as recordSessionState) and issues the start_session command to the
     * chosen agent, whose gateway is notified when the transaction commits. So the agent has the
     * command while the workflow task that placed it is still running; dispatchCommand then only
     * waits for the outcome. Idempotent: a retry (or the workflow task's retry after a worker
     * crash) finds the placement and the command (same idempotency key) and issues nothing twice.
     * Nothing is issued after the command's deadline.
     */
    async placeAndIssue(input: PlaceAndIssueInput): Promise<PlacedAndIssued> {
      const { sessionId, platform, interim, command } = input;
      if (deps.legacyDispatch) {
        const placed = await placeSession({ sessionId, platform });
        await recordSessionState({ sessionId, state: interim, agentDbId: placed.agentDbId, error: null });
        return { ...placed, issued: false };
      }
      const data = await loadStartData(sessionId); // a bad template fails now, before any agent acts
      return inTransaction(async (client) => {
        const placed = await placeIn(client, sessionId, platform, interim);
        if (Date.now() > command.deadline) return { ...placed, issued: false };
        await issueCommand(client, {
          agentDbId: placed.agentDbId,
          sessionId,
          type: 'start_session',
          data: data as unknown as Record<string, unknown>,
          idempotencyKey: command.idempotencyKey,
          generation: command.generation,
          expiresAt: command.deadline,
        });
        return { ...placed, issued: true };
      });
    },

    /**
     * Issues one command (once, by idempotency key) and waits for the agent's outcome,
     * heartbeating its progress. A later attempt re-queues an unfinished command instead of
     * creating another; the agent de-duplicates by command id. A command placeAndIssue issued is
     * only waited for on the first attempt (it is queued already).
     */
    async dispatchCommand(input: DispatchInput): Promise<DispatchResult> {
      const ctx = Context.current();
      const legacy = deps.legacyDispatch === true;
      // Taken before the row is read: a "done" notification after this point means read it again.
      let mark = waiter.mark();
      let row: CommandRow | undefined;
      let created = false;
      if (input.preIssued && !legacy) {
        row = (await pool.query<CommandRow>('SELECT * FROM agent_commands WHERE idempotency_key = $1', [input.idempotencyKey])).rows[0];
      }
      if (!row) {
        const data = input.commandType === 'start_session' ? await loadStartData(input.sessionId) : {};
        const cmd = {
          agentDbId: input.agentDbId,
          sessionId: input.sessionId,
          type: input.commandType,
          data: data as unknown as Record<string, unknown>,
          idempotencyKey: input.idempotencyKey,
          generation: input.generation,
          expiresAt: input.deadline,
        };
        ({ row, created } = legacy ? await ensureCommand(pool, cmd) : await issueCommand(pool, cmd));
      }
      // The row just read or written is current: the first wait needs no second read (legacy: it re-read).
      let known: CommandRow | undefined = legacy ? undefined : row;
      if (!created && row.status !== 'completed') {
        if (row.withdrawn_at) throw commandWithdrawn(input, row.error_message);
        if (row.status === 'failed' && row.result?.retryable === false) throw commandFailed(input, row.error_message);
        if (Date.now() > input.deadline) throw commandFailed(input, 'expired: its deadline passed before it finished');
        // An earlier attempt died or timed out: deliver again rather than wait on a lost frame.
        // (A command placeAndIssue just issued is queued already: its first attempt only waits.)
        if (!(input.preIssued && ctx.info.attempt === 1 && !legacy)) {
          await requeueCommand(pool, row.id, input.agentDbId, row.status === 'failed');
          known = undefined;
        }
      }
      let quietWait = true;
      for (;;) {
        if (!known) mark = waiter.mark();
        const cur = known ?? (await getCommand(pool, row.id));
        known = undefined;
        if (!cur) throw ApplicationFailure.nonRetryable(`command ${row.id} vanished`, FailureType.CommandFailed);
        if (cur.status === 'completed') return recordOutcome(input, cur.result as CommandResult);
        if (cur.status === 'failed') {
          if (cur.withdrawn_at || cur.result?.retryable === false) await releaseAfter(input);
          if (cur.withdrawn_at) throw commandWithdrawn(input, cur.error_message);
          if (cur.result?.retryable === false) throw commandFailed(input, cur.error_message);
          throw ApplicationFailure.retryable(`agent failed ${input.commandType}: ${cur.error_message}`, 'CommandRetryable');
        }
        // The first heartbeat goes to the server at once (later ones are throttled): a command the
        // agent answers within FIRST_WAIT_MS completes without that round trip. A cancellation (it
        // arrives with a heartbeat's answer) is seen at most FIRST_WAIT_MS later.
        const quiet = quietWait && !legacy;
        quietWait = false;
        if (!quiet) ctx.heartbeat({ commandId: cur.id, status: cur.status, progress: cur.progress });
        try {
          await Promise.race([waiter.wait(cur.id, quiet ? Math.min(pollMs, FIRST_WAIT_MS) : pollMs, legacy ? undefined : mark), ctx.cancelled]);
        } catch (err) {
          if (err instanceof CancelledFailure) await withdrawCommand(pool, input.idempotencyKey, WITHDRAWN);
          throw err;
        }
      }
    },

    recordSessionState,

    /**
     * The workflow stopped waiting for a command: withdraw it (see db/commands.ts). Returns what
     * the command is now; `completed` means it ran before the withdrawal.
     */
    async withdrawCommand(input: WithdrawInput): Promise<WithdrawResult> {
      const out = await withdrawCommand(pool, input.idempotencyKey, input.reason);
      // A wake (or start) the workflow gave up on no longer holds its owner's quota.
      const sessionId = input.idempotencyKey.split(':')[0];
      if (/:(wake|start)_session$/.test(input.idempotencyKey)) await releaseReservation(pool, sessionId);
      return out;
    },

    /** Counts a session failure or a reconciliation repair (metrics; the workflow history has the details). */
    async noteSessionEvent(input: SessionEventInput): Promise<void> {
      if (input.event === 'failed') deps.metrics?.sessionFailures.inc({ platform: input.platform, reason: input.detail });
      else deps.metrics?.reconcileRepairs.inc({ action: input.detail });
      // Automatic actions go to the audit log (user 'system'): a reconciliation repair, a failure.
      await writeSystemAudit(deps, {
        action: input.event === 'repair' ? 'session.reconcile_repair' : 'session.failed',
        resource_type: 'session',
        resource_id: input.sessionId,
        metadata: input.event === 'repair' ? { repair: input.detail, platform: input.platform } : { reason: input.detail, platform: input.platform },
      });
    },

    /** Finds the session's newest command generation, for a cleanup issued outside its workflow. */
    async nextCommandGeneration(sessionId: string): Promise<number | null> {
      const exists = await pool.query('SELECT 1 FROM sessions WHERE id = $1', [sessionId]);
      return exists.rowCount ? nextGeneration(pool, sessionId) : null;
    },
  };
}

const WITHDRAWN = 'withdrawn: the workflow no longer waits for this command (start cancelled or timed out)';

/** How long dispatchCommand first waits for the agent's outcome before its first heartbeat. */
const FIRST_WAIT_MS = 200;

/**
 * ensureCommand (db/commands.ts) in one statement: the INSERT and the gateway's NOTIFY together
 * (inside a transaction the notification goes out when it commits). Returns the existing command
 * instead when the idempotency key is taken (nothing notified: it was issued before).
 */
async function issueCommand(
  db: Pool | PoolClient,
  cmd: {
    agentDbId: string;
    sessionId: string;
    type: CommandType;
    data: Record<string, unknown>;
    idempotencyKey: string;
    generation: number;
    expiresAt: number;
  },
): Promise<{ row: CommandRow; created: boolean }> {
  const inserted = await db.query<CommandRow>(
    `WITH ins AS (
       INSERT INTO agent_commands (agent_id, session_id, command_type, command_data, status, idempotency_key, generation, expires_at)
       VALUES ($1, $2, $3, $4, 'pending', $5, $6, to_timestamp($7::double precision / 1000))
       ON CONFLICT (idempotency_key) DO NOTHING
       RETURNING *)
     SELECT ins.* FROM ins, LATERAL (SELECT pg_notify($8, $9)) AS notified`,
    [cmd.agentDbId, cmd.sessionId, cmd.type, cmd.data, cmd.idempotencyKey, cmd.generation, cmd.expiresAt, CHANNEL_COMMAND_PENDING, cmd.agentDbId],
  );
  if (inserted.rowCount) return { row: inserted.rows[0], created: true };
  const existing = await db.query<CommandRow>('SELECT * FROM agent_commands WHERE idempotency_key = $1', [cmd.idempotencyKey]);
  return { row: existing.rows[0], created: false };
}

function commandWithdrawn(input: DispatchInput, reason: string | null): ApplicationFailure {
  return ApplicationFailure.create({
    message: `${input.commandType} ${reason ?? 'withdrawn'}`,
    type: reason === WITHDRAWN_BY_STOP ? FailureType.CommandWithdrawnByStop : FailureType.CommandWithdrawn,
    nonRetryable: true,
  });
}

function commandFailed(input: DispatchInput, reason: string | null): ApplicationFailure {
  return ApplicationFailure.create({
    message: `agent failed ${input.commandType}: ${reason ?? 'no reason given'}`,
    type: FailureType.CommandFailed,
    nonRetryable: true,
  });
}
