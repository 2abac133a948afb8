/**
 * A new session's start_session command, issued by the gateway as soon as the session's row is
 * committed (SESSION_ISSUE_START_ON_CREATE, default on). The agent gets it when its transaction commits,
 * without waiting for the workflow to be started, picked up by a worker and placed: that wait was
 * most of a create's dispatch time, and all of it under load (issue 14).
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
import type { FastifyBaseLogger } from 'fastify';
import { ApplicationFailure } from '@temporalio/common';
import { issueCommand, withdrawAndLocate, type ClaimedCommand } from '../../db/commands';
import { inTransaction, type Resources } from '../../db/quota';
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

/**
 * Right after the session's row is committed (its own transaction, so the owner's quota lock is
 * not held meanwhile): places the session and issues its start command. Returns the agent it
 * placed it on (its agent_id), or null when it did not.
 * `start` and `need`: the command's payload and the session's resources, when the caller holds
 * them already (a new session: from its template), so they are not read again. When this pod
 * holds the agent's socket (`local`), the command is written as sent and this pod sends the row
 * it inserted as soon as the transaction commits: no NOTIFY to come back, no claim to read it again.
 */
export async function issueStartWithSession(
  pool: Pool,
  deps: PlacementDeps,
  s: { sessionId: string; platform: Platform; deadline: number; start?: StartSessionData; need?: Resources },
  log?: Pick<FastifyBaseLogger, 'warn'>,
  local?: LocalDelivery,
): Promise<string | null> {
  let direct: ClaimedCommand | undefined;
  let agentId: string;
  try {
    agentId = await inTransaction(pool, async (tx) => {
      const data = s.start ?? (await loadStartData(tx, s.sessionId));
      const placed = await placeSessionIn(tx, { ...deps, whenFull: 'queue', unplaced: true, need: s.need }, s.sessionId, s.platform, 'pending');
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
        { sendNow: local?.holds(placed.agentDbId) === true },
      );
      direct = issued.sent;
      return placed.agentId;
    });
  } catch (err) {
    // No agent, no room, a bad template: the workflow places it and says why. Anything else (the
    // database) is worth a line: the workflow still places it, but the fast path is failing.
    const type = err instanceof ApplicationFailure ? err.type : undefined;
    if (!type || !EXPECTED.has(type))
      log?.warn({ session: s.sessionId, err: (err as Error).message }, 'start not issued with the session; its workflow places it');
    return null;
  }
  if (direct) local!.sendIssued(direct);
  return agentId;
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
