/**
 * The command log (agent_commands) is the durable queue between workflows and agents:
 * pending → sent → ack → completed | failed. Activities write it; the gateway that holds the
 * agent's socket delivers it. PostgreSQL NOTIFY only speeds things up: every reader also polls,
 * so a missed notification delays a command by a second, never loses it.
 */
import type { Pool, PoolClient } from 'pg';
import type { CommandResult, CommandType } from '../protocol/messages';

/** NOTIFY channel: payload is the agent's row id; "this agent has pending commands". */
export const CHANNEL_COMMAND_PENDING = 'streamspace_command_pending';
/** NOTIFY channel: payload is the command id; "this command reached completed or failed". */
export const CHANNEL_COMMAND_DONE = 'streamspace_command_done';
/** NOTIFY channel: payload `<agent row id> <command id> <session id>`; "tell the agent to abandon it". */
export const CHANNEL_COMMAND_WITHDRAWN = 'streamspace_command_withdrawn';

export type CommandStatus = 'pending' | 'sent' | 'ack' | 'completed' | 'failed';

export type CommandRow = {
  id: string;
  agent_id: string;
  session_id: string;
  command_type: CommandType;
  command_data: Record<string, unknown>;
  status: CommandStatus;
  result: (CommandResult & { retryable?: boolean }) | null;
  error_message: string | null;
  retry_count: number;
  progress: string | null;
  idempotency_key: string;
  generation: number;
  expires_at: Date | null;
  withdrawn_at: Date | null;
  created_at: Date;
};

type Queryable = Pool | PoolClient;
/** A transaction's client as db/quota.ts's inTransaction hands it out. */
type QueryableTx = import('./quota').Queryable;

/** A command to issue: for one session, to one agent, once per idempotency key. */
export interface NewCommand {
  agentDbId: string;
  sessionId: string;
  type: CommandType;
  data: Record<string, unknown>;
  idempotencyKey: string;
  generation: number;
  /** Epoch ms after which the command must neither be delivered nor started. */
  expiresAt: number;
}

/**
 * ensureCommand in one statement: the INSERT and the gateway's NOTIFY together
 * (inside a transaction the notification goes out when it commits). Returns the existing command
 * instead when the idempotency key is taken (nothing notified: it was issued before).
 * `sendNow` when the caller's pod holds the agent's socket and sends the command itself once
 * committed: it is written as sent (as claimForDelivery would mark it) and without a NOTIFY, and
 * comes back as `sent`, the frame's row (only when created: an existing command is not sent
 * again). If that send does not happen, the caller puts it back to pending (requeueCommand); if
 * the socket dies after it, the agent's next registration delivers it again (sent commands are
 * redelivered then), as with any claimed command.
 * `assignSession`: the same statement records the command's agent as the session's (placeSessionIn
 * with deferAssign), so a placement holds its agent's lock one round trip less.
 */
export async function issueCommand(
  db: QueryableTx,
  cmd: NewCommand,
  opts: { sendNow?: boolean; assignSession?: boolean } = {},
): Promise<{ row: CommandRow; created: boolean; sent?: ClaimedCommand }> {
  const sendNow = opts.sendNow === true;
  const assign = opts.assignSession === true ? `assigned AS (UPDATE sessions SET agent_id = $1, updated_at = NOW() WHERE id = $2),` : '';
  const inserted = await db.query<ClaimedCommand>(
    `WITH ${assign} ins AS (
       INSERT INTO agent_commands (agent_id, session_id, command_type, command_data, status, sent_at, idempotency_key, generation, expires_at)
       VALUES ($1, $2, $3, $4, CASE WHEN $10::boolean THEN 'sent' ELSE 'pending' END, CASE WHEN $10::boolean THEN clock_timestamp() END,
               $5, $6, to_timestamp($7::double precision / 1000))
       ON CONFLICT (idempotency_key) DO NOTHING
       RETURNING *)
     SELECT ins.*, false AS redelivery,
            COALESCE(GREATEST(0, (EXTRACT(EPOCH FROM (ins.expires_at - clock_timestamp())) * 1000)::bigint), 600000)::int AS expires_in_ms
       FROM ins, LATERAL (SELECT CASE WHEN NOT $10::boolean THEN pg_notify($8, $9) END) AS notified`,
    [cmd.agentDbId, cmd.sessionId, cmd.type, cmd.data, cmd.idempotencyKey, cmd.generation, cmd.expiresAt, CHANNEL_COMMAND_PENDING, cmd.agentDbId, sendNow],
  );
  if (inserted.rowCount) return { row: inserted.rows[0], created: true, ...(sendNow ? { sent: inserted.rows[0] } : {}) };
  return { row: (await getCommandByKey(db, cmd.idempotencyKey))!, created: false };
}

/**
 * Creates the command unless one with this idempotency key exists, and returns it. A retried
 * activity therefore finds its earlier command instead of issuing a second one.
 */
export async function ensureCommand(db: Queryable, cmd: NewCommand): Promise<{ row: CommandRow; created: boolean }> {
  const inserted = await db.query<CommandRow>(
    `INSERT INTO agent_commands (agent_id, session_id, command_type, command_data, status, idempotency_key, generation, expires_at)
     VALUES ($1, $2, $3, $4, 'pending', $5, $6, to_timestamp($7::double precision / 1000))
     ON CONFLICT (idempotency_key) DO NOTHING
     RETURNING *`,
    [cmd.agentDbId, cmd.sessionId, cmd.type, cmd.data, cmd.idempotencyKey, cmd.generation, cmd.expiresAt],
  );
  if (inserted.rowCount) {
    await notifyPending(db, cmd.agentDbId);
    return { row: inserted.rows[0], created: true };
  }
  return { row: (await getCommandByKey(db, cmd.idempotencyKey))!, created: false };
}

/** The command issued under this idempotency key, if any. */
export async function getCommandByKey(db: QueryableTx, idempotencyKey: string): Promise<CommandRow | undefined> {
  const r = await db.query<CommandRow>('SELECT * FROM agent_commands WHERE idempotency_key = $1', [idempotencyKey]);
  return r.rows[0];
}

export async function getCommand(db: Queryable, id: string): Promise<CommandRow | undefined> {
  const r = await db.query<CommandRow>('SELECT * FROM agent_commands WHERE id = $1', [id]);
  return r.rows[0];
}

/**
 * Puts an unfinished or retryably-failed command back in the queue (a new activity attempt, or
 * a delivery that may have been lost with a socket). The agent de-duplicates by command id.
 */
export async function requeueCommand(db: Queryable, id: string, agentDbId: string, countRetry: boolean): Promise<void> {
  await db.query(
    `UPDATE agent_commands
        SET status = 'pending', error_message = NULL, updated_at = NOW(),
            retry_count = retry_count + $2::int
      WHERE id = $1 AND status <> 'completed' AND withdrawn_at IS NULL AND (expires_at IS NULL OR expires_at > NOW())`,
    [id, countRetry ? 1 : 0],
  );
  await notifyPending(db, agentDbId);
}

export async function notifyPending(db: Queryable, agentDbId: string): Promise<void> {
  await db.query('SELECT pg_notify($1, $2)', [CHANNEL_COMMAND_PENDING, agentDbId]);
}

/** A command as claimed for delivery: how long it has left, and whether it went out before. */
export type ClaimedCommand = CommandRow & { expires_in_ms: number; redelivery: boolean };

/**
 * Claims the agent's pending commands for delivery (pending → sent). With `redeliver` (a new
 * connection of the agent), commands already sent or acked are returned too: the agent may never
 * have seen them, and it de-duplicates by id. Never a withdrawn or expired command.
 */
export async function claimForDelivery(db: Queryable, agentDbId: string, redeliver: boolean): Promise<ClaimedCommand[]> {
  const statuses = redeliver ? ['pending', 'sent', 'ack'] : ['pending'];
  const r = await db.query<ClaimedCommand>(
    `WITH due AS (
       SELECT id, status AS was FROM agent_commands
        WHERE agent_id = $1 AND status = ANY($2::text[]) AND withdrawn_at IS NULL
          AND (expires_at IS NULL OR expires_at > NOW())
          FOR UPDATE SKIP LOCKED)
     UPDATE agent_commands c
        SET status = CASE WHEN c.status = 'ack' THEN 'ack' ELSE 'sent' END,
            sent_at = NOW(), updated_at = NOW()
       FROM due WHERE c.id = due.id
     RETURNING c.*, due.was <> 'pending' AS redelivery,
               COALESCE(GREATEST(0, (EXTRACT(EPOCH FROM (c.expires_at - NOW())) * 1000)::bigint), 600000)::int AS expires_in_ms`,
    [agentDbId, statuses],
  );
  // Deliver in the order the workflows issued them.
  return r.rows.sort((a, b) => a.created_at.getTime() - b.created_at.getTime());
}

export async function markAcked(db: Queryable, id: string, agentDbId: string): Promise<void> {
  await db.query(
    `UPDATE agent_commands SET status = 'ack', acked_at = NOW(), updated_at = NOW()
      WHERE id = $1 AND agent_id = $2 AND status IN ('pending', 'sent')`,
    [id, agentDbId],
  );
}

export async function markProgress(db: Queryable, id: string, agentDbId: string, message: string): Promise<void> {
  await db.query(`UPDATE agent_commands SET progress = $3, updated_at = NOW() WHERE id = $1 AND agent_id = $2`, [id, agentDbId, message]);
}

/**
 * What became of a reported outcome: `recorded` now; `duplicate` (recorded before); `withdrawn`
 * (the workflow gave up on it first: the agent must undo it); `unknown` (no such command of this
 * agent). All four are durable answers: the agent may stop re-sending.
 */
export type FinishResult =
  { kind: 'recorded'; commandType: CommandType; createdAt: Date; sessionId: string } | { kind: 'duplicate' | 'withdrawn' | 'unknown'; sessionId?: string };

/**
 * Records the outcome once; a repeated report of an already finished command changes nothing.
 * The waiting workflow is notified by the same statement, so the record and its notice commit
 * together (no crash between them leaves a workflow waiting for a notice that never comes).
 */
export async function markFinished(
  db: Queryable,
  id: string,
  agentDbId: string,
  outcome: { ok: true; result: CommandResult } | { ok: false; error: string; retryable: boolean },
): Promise<FinishResult> {
  const set = outcome.ok ? `status = 'completed', result = $3, error_message = NULL` : `status = 'failed', result = $3, error_message = $5`;
  const r = await db.query<{ command_type: CommandType; created_at: Date; session_id: string }>(
    `WITH done AS (
       UPDATE agent_commands SET ${set}, completed_at = NOW(), updated_at = NOW()
        WHERE id = $1 AND agent_id = $2 AND status NOT IN ('completed', 'failed')
        RETURNING id, command_type, created_at, session_id)
     SELECT command_type, created_at, session_id FROM done, LATERAL (SELECT pg_notify($4, done.id::text)) AS notified`,
    outcome.ok ? [id, agentDbId, outcome.result, CHANNEL_COMMAND_DONE] : [id, agentDbId, { retryable: outcome.retryable }, CHANNEL_COMMAND_DONE, outcome.error],
  );
  if (r.rowCount) {
    return { kind: 'recorded', commandType: r.rows[0].command_type, createdAt: r.rows[0].created_at, sessionId: r.rows[0].session_id };
  }
  const cur = await db.query<{ withdrawn_at: Date | null; session_id: string }>(
    'SELECT withdrawn_at, session_id FROM agent_commands WHERE id = $1 AND agent_id = $2',
    [id, agentDbId],
  );
  if (!cur.rows[0]) return { kind: 'unknown' };
  return { kind: cur.rows[0].withdrawn_at ? 'withdrawn' : 'duplicate', sessionId: cur.rows[0].session_id };
}

export type WithdrawResult = 'withdrawn' | 'completed' | 'failed' | 'absent';

/**
 * The workflow gave up on a command (timeout, cancel): whatever its status, unless finished, it
 * becomes failed with the reason, is never delivered again, and the agent holding it is told to
 * abandon and undo it. Returns what the command is now: `completed` means the agent did it
 * before the withdrawal (the caller must clean up).
 */
export async function withdrawCommand(db: Queryable, idempotencyKey: string, reason: string): Promise<WithdrawResult> {
  const r = await db.query<{ id: string; agent_id: string; session_id: string }>(
    `UPDATE agent_commands SET status = 'failed', error_message = $2, withdrawn_at = NOW(), completed_at = NOW(), updated_at = NOW()
      WHERE idempotency_key = $1 AND status IN ('pending', 'sent', 'ack')
      RETURNING id, agent_id, session_id`,
    [idempotencyKey, reason],
  );
  if (r.rowCount) {
    const c = r.rows[0];
    await notifyWithdrawn(db, [c]);
    return 'withdrawn';
  }
  const cur = await db.query<{ status: CommandStatus }>('SELECT status FROM agent_commands WHERE idempotency_key = $1', [idempotencyKey]);
  if (!cur.rows[0]) return 'absent';
  return cur.rows[0].status === 'completed' ? 'completed' : 'failed';
}

/**
 * Withdraws a command (withdrawCommand) and, when it had finished before the withdrawal (the
 * agent may hold what it made or part of it), says on which agent: the caller removes it there.
 */
export async function withdrawAndLocate(
  db: Queryable,
  idempotencyKey: string,
  reason: string,
): Promise<{ outcome: WithdrawResult; ranOn: { agentDbId: string; agentId: string } | null }> {
  const outcome = await withdrawCommand(db, idempotencyKey, reason);
  if (outcome !== 'completed' && outcome !== 'failed') return { outcome, ranOn: null };
  const r = await db.query<{ id: string; agent_id: string }>(
    'SELECT a.id, a.agent_id FROM agent_commands c JOIN agents a ON a.id = c.agent_id WHERE c.idempotency_key = $1',
    [idempotencyKey],
  );
  const row = r.rows[0];
  return { outcome, ranOn: row ? { agentDbId: row.id, agentId: row.agent_id } : null };
}

/**
 * Fails every unfinished command whose deadline passed more than graceMs ago (its workflow died
 * with it, or could not withdraw it), and tells the agents to abandon them.
 */
export async function expireOverdue(
  db: Queryable,
  graceMs: number,
): Promise<{ id: string; agent_id: string; session_id: string; command_type: CommandType }[]> {
  const r = await db.query<{ id: string; agent_id: string; session_id: string; command_type: CommandType }>(
    `UPDATE agent_commands SET status = 'failed', error_message = 'expired: its deadline passed before it finished',
            withdrawn_at = NOW(), completed_at = NOW(), updated_at = NOW()
      WHERE status IN ('pending', 'sent', 'ack') AND expires_at < NOW() - ($1::int * INTERVAL '1 millisecond')
      RETURNING id, agent_id, session_id, command_type`,
    [graceMs],
  );
  if (r.rowCount) await notifyWithdrawn(db, r.rows);
  return r.rows;
}

/** Tells the agents' pods (cancel_command) and the waiting activities (done), all rows in one round trip. */
async function notifyWithdrawn(db: Queryable, rows: { id: string; agent_id: string; session_id: string }[]): Promise<void> {
  await db.query(`SELECT pg_notify($1, w), pg_notify($2, d) FROM unnest($3::text[], $4::text[]) AS n(w, d)`, [
    CHANNEL_COMMAND_WITHDRAWN,
    CHANNEL_COMMAND_DONE,
    rows.map((c) => `${c.agent_id} ${c.id} ${c.session_id}`),
    rows.map((c) => c.id),
  ]);
}

/** The next command generation for a session (one above any command issued for it). */
export async function nextGeneration(db: Queryable, sessionId: string): Promise<number> {
  const r = await db.query<{ g: number }>('SELECT COALESCE(MAX(generation), 0) + 1 AS g FROM agent_commands WHERE session_id = $1', [sessionId]);
  return r.rows[0].g;
}
