/**
 * Session activities: every one idempotent, so Temporal may retry any of them after a worker,
 * database or agent fault without a second container or a lost command.
 */
import { ApplicationFailure, CancelledFailure, Context } from '@temporalio/activity';
import type { Pool, PoolClient } from 'pg';
import {
  CommandRow,
  ensureCommand,
  getCommand,
  getCommandByKey,
  issueCommand,
  NewCommand,
  nextGeneration,
  requeueCommand,
  withdrawAndLocate,
  withdrawCommand,
  WithdrawResult,
} from '../db/commands';
import type { CommandResult, CommandType, Platform } from '../protocol/messages';
import { FailureType, SessionState, WITHDRAWN_BY_STOP } from '../workflows/session-api';
import { placementWhenFull } from '../config/env';
import type { CommandWaiter } from './command-waiter';
import { loadStartData as loadStartDataOf, Placement, placeSessionIn } from './placement';
import { inTransaction as inTx, Queryable, releaseReservation } from '../db/quota';
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
  /**
   * How long quickCommand (a local activity: the workflow task stays open meanwhile) waits for the
   * agent's outcome before the command is left to dispatchCommand (COMMAND_QUICK_WAIT, default 500ms: the workflow cannot take an Update meanwhile, so a stop waits that long at most).
   */
  quickWaitMs?: number;
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
export type { Placement } from './placement';
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
/**
 * quickCommand's input: a command, and what to write before it is issued, in the same local
 * activity (workflows/session.ts: one-step commands, ALL_PATCHES). Each is idempotent, so a retry writes it again.
 */
export interface QuickInput extends DispatchInput {
  first?: {
    /** The session's state while the command runs (a stop's "terminating"), as recordSessionState writes it. */
    record?: RecordStateInput;
    /** A wake's quota reservation (reserveForWake): fails with FailureType.QuotaExceeded, and then nothing is issued. */
    reserveForWake?: boolean;
  };
}
/** quickCommand's answer: the outcome, or (not yet there, or not a success) that dispatchCommand takes over the issued command. */
export type QuickOutcome = { command: CommandType } & ({ done: true; result: DispatchResult } | { done: false; issued: boolean });
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

/** A row when that command is superseded: withdrawn, or a newer one issued for its session (placeholders given). */
const supersededSql = (session: string, generation: string, key: string) =>
  `SELECT 1 FROM agent_commands WHERE session_id = ${session} AND (generation > ${generation} OR (idempotency_key = ${key} AND withdrawn_at IS NOT NULL))`;

export type SessionActivities = ReturnType<typeof createSessionActivities>;

export function createSessionActivities(deps: SessionActivityDeps) {
  const { pool, waiter } = deps;
  const pollMs = deps.pollIntervalMs ?? 1000;
  const quickWaitMs = deps.quickWaitMs ?? 500;
  const whenFull = deps.whenFull ?? placementWhenFull();
  // Bench-only switch (see SessionActivityDeps.legacyDispatch); never set outside bench/dispatch.ts.
  deps = { ...deps, legacyDispatch: deps.legacyDispatch ?? process.env.STREAMSPACE_BENCH_LEGACY_DISPATCH === 'true' };

  /** A wake or start that failed for good: its owner's quota reservation ends (activities/quota.ts). */
  async function releaseAfter(input: DispatchInput): Promise<void> {
    if (input.commandType === 'wake_session' || input.commandType === 'start_session') await releaseReservation(pool, input.sessionId);
  }

  const loadStartData = (sessionId: string) => loadStartDataOf(pool, sessionId);
  const placeIn = (client: PoolClient, sessionId: string, platform: Platform, interim?: SessionState) =>
    placeSessionIn(client, { heartbeatTimeoutMs: deps.heartbeatTimeoutMs, whenFull }, sessionId, platform, interim);

  /**
   * Writes the session's state. With `unless` (a command's outcome), nothing is written when that
   * command was withdrawn or a newer one was issued since, checked in the same statement; returns
   * whether the state was written.
   */
  async function recordSessionState(input: RecordStateInput, unless?: { generation: number; idempotencyKey: string }): Promise<boolean> {
    // The check and the release go in the same statement: one round trip. (Legacy, for the bench's
    // "before": each in a statement of its own.)
    const oneStatement = !deps.legacyDispatch;
    if (unless && !oneStatement && (await superseded(input.sessionId, unless))) return false;
    // A wake's quota reservation ends with its outcome: running (counted as such from now on),
    // or the failed wake's hibernated-with-error; any other state also ends it.
    const release = input.state !== 'hibernated' || input.error !== null;
    const r = await pool.query<{ was: string | null; created_at: Date }>(
      `WITH ${
        oneStatement
          ? `superseded AS (SELECT $8::int IS NOT NULL AND EXISTS (${supersededSql('$1', '$8', '$9')}) AS yes),
             released AS (DELETE FROM quota_reservations WHERE session_id = $1 AND $7::boolean AND NOT (SELECT yes FROM superseded)),`
          : ''
      }
            old AS (SELECT id, state FROM sessions WHERE id = $1 ${oneStatement ? 'AND NOT (SELECT yes FROM superseded)' : ''} FOR UPDATE)
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
        ...(oneStatement ? [release, unless?.generation ?? null, unless?.idempotencyKey ?? null] : []),
      ],
    );
    if (release && !oneStatement) await releaseReservation(pool, input.sessionId);
    const row = r.rows[0];
    if (row && input.state === 'running' && row.was === 'pending' && input.platform)
      deps.metrics?.sessionStart.observe({ platform: input.platform }, Math.max(0, (Date.now() - row.created_at.getTime()) / 1000));
    return !unless || r.rowCount === 1;
  }

  /** A command of this generation was withdrawn, or a newer command was issued for its session. */
  async function superseded(sessionId: string, c: { generation: number; idempotencyKey: string }): Promise<boolean> {
    return ((await pool.query(`${supersededSql('$1', '$2', '$3')} LIMIT 1`, [sessionId, c.generation, c.idempotencyKey])).rowCount ?? 0) > 0;
  }

  /** dispatchCommand's `then`: the session's state after the completed command (see DispatchInput). */
  async function recordOutcome(input: DispatchInput, result: CommandResult): Promise<DispatchResult> {
    const then = input.then;
    // (Legacy, for the bench's "before": the workflow writes it, with a local activity of its own.)
    if (!then || deps.legacyDispatch || Date.now() > input.deadline) return result;
    // A late outcome (the workflow gave up on this command: withdrawn, or a newer command such as a
    // stop was issued since) must not overwrite what the workflow decided: it is left to the
    // workflow, which writes its own state when the result is not `recorded`.
    const written = await recordSessionState(
      {
        sessionId: input.sessionId,
        state: then.state,
        agentDbId: input.agentDbId,
        platformMetadata: then.state === 'running' ? { ...(result.platform_metadata ?? {}), vnc: result.vnc ?? null } : undefined,
        error: null,
        platform: then.platform,
      },
      { generation: input.generation, idempotencyKey: input.idempotencyKey },
    );
    if (!written) return result;
    return { ...result, recorded: { lifetime: then.lifetime ? await lifetimeOf(input.sessionId) : null } };
  }
  const lifetimeOf = createLifetimeActivities({ pool }).sessionLifetime;

  /** The command a DispatchInput describes (a start carries what the agent needs to create the session). */
  async function newCommand(input: DispatchInput): Promise<NewCommand> {
    const data = input.commandType === 'start_session' ? await loadStartData(input.sessionId) : {};
    return {
      agentDbId: input.agentDbId,
      sessionId: input.sessionId,
      type: input.commandType,
      data: data as unknown as Record<string, unknown>,
      idempotencyKey: input.idempotencyKey,
      generation: input.generation,
      expiresAt: input.deadline,
    };
  }

  const inTransaction = <T>(fn: (client: PoolClient) => Promise<T>) => inTx(pool, fn as (tx: Queryable) => Promise<T>);

  async function placeSession({ sessionId, platform }: PlaceInput): Promise<Placement> {
    await loadStartData(sessionId); // a bad template fails now, before any agent acts
    return inTransaction((client) => placeIn(client, sessionId, platform));
  }

  const quota = createQuotaActivities({ pool });

  return {
    ...quota,

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
      // Issued before (by the gateway with the session, or an earlier attempt that committed): the
      // session stays where the command went, and this start waits for it there until its deadline,
      // also while that agent is away (as for any command: it may come back in time).
      const issued = await pool.query<{ id: string; agent_id: string }>(
        `SELECT a.id, a.agent_id FROM agent_commands c JOIN agents a ON a.id = c.agent_id
          WHERE c.idempotency_key = $1 AND c.session_id = $2`,
        [command.idempotencyKey, sessionId],
      );
      if (issued.rows[0]) return { agentDbId: issued.rows[0].id, agentId: issued.rows[0].agent_id, issued: true };
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
        row = await getCommandByKey(pool, input.idempotencyKey);
      }
      if (!row) {
        const cmd = await newCommand(input);
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

    /**
     * A command's fast path, run as a local activity inside the workflow task that decided it:
     * issues the command (once, by idempotency key, as dispatchCommand would) and waits up to
     * quickWaitMs for the agent to complete it, writing `then` as dispatchCommand does. Most
     * commands finish within that: hibernate, wake and stop then cost one workflow task and no
     * activity task (issue 14: Temporal round trips per operation). Anything else (no outcome yet,
     * a failure, a withdrawal, a deadline passed) is left to dispatchCommand, which finds the
     * command issued and only waits for it, with all of its failure handling and heartbeats.
     * Idempotent: a retry, or a replay after a worker died, finds the command and waits again.
     */
    async quickCommand(input: QuickInput): Promise<QuickOutcome> {
      const command = input.commandType;
      if (input.first?.record) await recordSessionState(input.first.record);
      if (input.first?.reserveForWake) await quota.reserveForWake({ sessionId: input.sessionId });
      if (deps.legacyDispatch || Date.now() > input.deadline) return { command, done: false, issued: !!input.preIssued };
      let mark = waiter.mark();
      let row: CommandRow | undefined;
      if (input.preIssued) {
        row = await getCommandByKey(pool, input.idempotencyKey);
        if (!row) return { command, done: false, issued: false };
      } else {
        ({ row } = await issueCommand(pool, await newCommand(input)));
      }
      const until = Date.now() + Math.min(quickWaitMs, Math.max(0, input.deadline - Date.now()));
      for (;;) {
        if (row.status === 'completed') return { command, done: true, result: await recordOutcome(input, row.result as CommandResult) };
        if (row.status === 'failed' || row.withdrawn_at) break;
        const left = until - Date.now();
        if (left <= 0) break;
        await waiter.wait(row.id, left, mark);
        mark = waiter.mark();
        const cur = await getCommand(pool, row.id);
        if (!cur) break;
        row = cur;
      }
      return { command, done: false, issued: true };
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

    /**
     * The workflow gave up on a start before knowing where it was placed: a stop reached its first
     * activation (the gateway may have issued the start with the session: api/sessions/start-command.ts),
     * or a stop or the start's timeout cancelled placeAndIssue. Withdraws the start command; says
     * whether there was one and, when the agent may hold something of it (it completed or failed
     * before the withdrawal), which agent: the workflow's stop or cleanup then removes it there.
     */
    async abandonIssuedStart(input: WithdrawInput): Promise<{ issued: boolean; onAgent: { agentDbId: string; agentId: string } | null }> {
      const { outcome, ranOn } = await withdrawAndLocate(pool, input.idempotencyKey, input.reason);
      await releaseReservation(pool, input.idempotencyKey.split(':')[0]);
      return { issued: outcome !== 'absent', onAgent: ranOn };
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
