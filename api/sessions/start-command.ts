/**
 * A new session's start_session command, issued by the gateway in the transaction that writes the
 * session's row (SESSION_ISSUE_START_ON_CREATE, default on). The agent gets it when that
 * transaction commits, without waiting for the workflow to be started, picked up by a worker and
 * placed: that wait was most of a create's dispatch time, and all of it under load (issue 14).
 * While a licence limit applies, the admission holds the licence's lock, which every create
 * waits for; the start is then issued in a transaction of its own, after the row's has committed,
 * so that creates do not queue behind each other's placement.
 *
 * Nothing is given up: the command is placed exactly as the workflow places it (same function,
 * same locks) and carries the key and generation of the workflow's first command, so the
 * workflow's placeAndIssue finds the placement and the command (idempotent) and only waits for
 * the outcome. If this pod dies before the workflow is started, the session reaper starts it (the
 * row says workflow_confirmed = false) and it adopts the command the same way; if the workflow
 * cannot be started, the caller withdraws the command (the agent abandons and undoes it).
 *
 * Best effort: when no agent can take the session now (none online, all full, the template
 * unusable), nothing is issued and the workflow places it as before, retrying or failing with
 * the reason.
 */
import type { Pool } from 'pg';
import type { Logger } from '../../config/log';
import { ApplicationFailure } from '@temporalio/common';
import { issueCommand, withdrawAndLocate, type ClaimedCommand } from '../../db/commands';
import { inTransaction, type Queryable, type Resources } from '../../db/quota';
import { loadStartData, placeSessionIn, startData, type PlacementDeps, type StartSource } from '../../activities/placement';
import { commandKey, FailureType } from '../../workflows/session-api';
import type { Platform, StartSessionData } from '../../protocol/messages';

/** Why a start may not be issued now, the workflow's to handle (activities/placement.ts). */
const EXPECTED = new Set<string>([FailureType.NoAgentAvailable, FailureType.NoCapacity, FailureType.InvalidTemplate]);

/** The generation of a new session's first command (the workflow's firstCommandSeq is then absent: 0). */
const FIRST = 1;

export function firstStartKey(sessionId: string): string {
  return commandKey(sessionId, FIRST, 'start_session');
}

/**
 * The start command's payload from what the request holds; undefined when the template is
 * unusable (issueStartWithSession then reads it, gives up, and the workflow fails it with the reason).
 */
export function startDataOrUndefined(row: StartSource): StartSessionData | undefined {
  try {
    return startData(row);
  } catch {
    return undefined;
  }
}

/** This pod's own delivery to agents whose socket it holds (api/agents/gateway.ts). */
export interface LocalDelivery {
  holds(agentDbId: string): boolean;
  /** Sends a command issued as sent (issueCommand's sendNow); puts it back to pending if it cannot. */
  sendIssued(row: ClaimedCommand): void;
}

/** A start issued with its session: the agent it went to, and the frame this pod sends once that commits. */
export interface IssuedStart {
  agentId: string;
  direct?: ClaimedCommand;
}

/** Issuing the start failed in a way that is not the workflow's to handle (the database): roll back, then go without. */
export class StartNotIssued extends Error {
  constructor(readonly reason: Error) {
    super(`start not issued with the session: ${reason.message}`);
  }
}

/**
 * In the transaction that writes the new session's row (after it): places the session and issues
 * its start command. Returns the agent and, when this pod holds the agent's socket (`local`), the
 * command as written (sent): the caller hands it to sendIssuedStart once the transaction has
 * committed, so no NOTIFY comes back and no claim reads it again. Returns null when no agent can
 * take the session now (the workflow places it, retrying or failing with the reason); throws
 * StartNotIssued on anything else (the transaction may be aborted).
 * `start` and `need`: the command's payload and the session's resources, when the caller holds
 * them already (a new session: from its template), so they are not read again.
 * The agent is recorded on the session by the statement that inserts the command (deferAssign).
 */
export async function issueStartIn(
  tx: Queryable,
  deps: PlacementDeps,
  s: { sessionId: string; platform: Platform; deadline: number; start?: StartSessionData; need?: Resources },
  local?: LocalDelivery,
): Promise<IssuedStart | null> {
  try {
    const data = s.start ?? (await loadStartData(tx, s.sessionId));
    const placed = await placeSessionIn(tx, { ...deps, whenFull: 'queue', unplaced: true, need: s.need, deferAssign: true }, s.sessionId, s.platform);
    const issued = await issueCommand(
      tx,
      {
        agentDbId: placed.agentDbId,
        sessionId: s.sessionId,
        type: 'start_session',
        data: data as unknown as Record<string, unknown>,
        idempotencyKey: firstStartKey(s.sessionId),
        generation: FIRST,
        expiresAt: s.deadline,
      },
      { sendNow: local?.holds(placed.agentDbId) === true, assignSession: true },
    );
    return { agentId: placed.agentId, direct: issued.sent };
  } catch (err) {
    // No agent, no room, a bad template: thrown before any statement failed; the workflow says why.
    const type = err instanceof ApplicationFailure ? err.type : undefined;
    if (type && EXPECTED.has(type)) return null;
    throw new StartNotIssued(err as Error);
  }
}

/** After the commit: this pod sends the frame it wrote as sent. Returns the agent's id, or null. */
export function sendIssuedStart(issued: IssuedStart | null, local?: LocalDelivery): string | null {
  if (issued?.direct) local!.sendIssued(issued.direct);
  return issued?.agentId ?? null;
}

/**
 * issueStartIn in a transaction of its own, for a session whose row is committed already. A
 * failure other than the expected ones is worth a line: the workflow still places the session,
 * but the fast path is failing.
 */
export async function issueStartWithSession(
  pool: Pool,
  deps: PlacementDeps,
  s: Parameters<typeof issueStartIn>[2],
  log?: Pick<Logger, 'warn'>,
  local?: LocalDelivery,
): Promise<string | null> {
  try {
    return sendIssuedStart(await inTransaction(pool, (tx) => issueStartIn(tx, deps, s, local)), local);
  } catch (err) {
    log?.warn('start not issued with the session; its workflow places it', { session: s.sessionId, err: (err as Error).message });
    return null;
  }
}

/**
 * The session's workflow could not be started: its agent abandons (and undoes) the start command;
 * if the agent ran it already, a stop_session (the next generation) removes what it made. Nobody
 * waits for that stop: the command log delivers it, and the agent's deadline bounds it.
 */
export async function withdrawFirstStart(db: Pool, sessionId: string, reason: string, stopTimeoutMs = 5 * 60_000): Promise<void> {
  const { ranOn } = await withdrawAndLocate(db, firstStartKey(sessionId), `withdrawn: ${reason}`);
  if (!ranOn) return;
  await issueCommand(db, {
    agentDbId: ranOn.agentDbId,
    sessionId,
    type: 'stop_session',
    data: {},
    idempotencyKey: commandKey(sessionId, FIRST + 1, 'stop_session'),
    generation: FIRST + 1,
    expiresAt: Date.now() + stopTimeoutMs,
  });
}
