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

export type CommandStatus = 'pending' | 'sent' | 'ack' | 'completed' | 'failed';

export interface CommandRow {
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
  created_at: Date;
}

type Queryable = Pool | PoolClient;

/**
 * Creates the command unless one with this idempotency key exists, and returns it. A retried
 * activity therefore finds its earlier command instead of issuing a second one.
 */
export async function ensureCommand(
  db: Queryable,
  cmd: { agentDbId: string; sessionId: string; type: CommandType; data: Record<string, unknown>; idempotencyKey: string },
): Promise<{ row: CommandRow; created: boolean }> {
  const inserted = await db.query<CommandRow>(
    `INSERT INTO agent_commands (agent_id, session_id, command_type, command_data, status, idempotency_key)
     VALUES ($1, $2, $3, $4, 'pending', $5)
     ON CONFLICT (idempotency_key) DO NOTHING
     RETURNING *`,
    [cmd.agentDbId, cmd.sessionId, cmd.type, cmd.data, cmd.idempotencyKey],
  );
  if (inserted.rowCount) {
    await notifyPending(db, cmd.agentDbId);
    return { row: inserted.rows[0], created: true };
  }
  const existing = await db.query<CommandRow>('SELECT * FROM agent_commands WHERE idempotency_key = $1', [cmd.idempotencyKey]);
  return { row: existing.rows[0], created: false };
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
      WHERE id = $1 AND status <> 'completed'`,
    [id, countRetry ? 1 : 0],
  );
  await notifyPending(db, agentDbId);
}

export async function notifyPending(db: Queryable, agentDbId: string): Promise<void> {
  await db.query('SELECT pg_notify($1, $2)', [CHANNEL_COMMAND_PENDING, agentDbId]);
}

/**
 * Claims the agent's pending commands for delivery (pending → sent). With `redeliver`, commands
 * already sent or acked are returned too: after a reconnect the agent may never have seen them.
 */
export async function claimForDelivery(db: Queryable, agentDbId: string, redeliver: boolean): Promise<CommandRow[]> {
  const statuses = redeliver ? ['pending', 'sent', 'ack'] : ['pending'];
  const r = await db.query<CommandRow>(
    `UPDATE agent_commands
        SET status = CASE WHEN status = 'ack' THEN 'ack' ELSE 'sent' END,
            sent_at = NOW(), updated_at = NOW()
      WHERE agent_id = $1 AND status = ANY($2::text[])
      RETURNING *`,
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

/** Records the outcome once; a repeated report of an already finished command changes nothing. */
export async function markFinished(
  db: Queryable,
  id: string,
  agentDbId: string,
  outcome: { ok: true; result: CommandResult } | { ok: false; error: string; retryable: boolean },
): Promise<boolean> {
  const r = outcome.ok
    ? await db.query(
        `UPDATE agent_commands SET status = 'completed', result = $3, error_message = NULL, completed_at = NOW(), updated_at = NOW()
          WHERE id = $1 AND agent_id = $2 AND status NOT IN ('completed', 'failed')`,
        [id, agentDbId, outcome.result],
      )
    : await db.query(
        `UPDATE agent_commands SET status = 'failed', result = $3, error_message = $4, completed_at = NOW(), updated_at = NOW()
          WHERE id = $1 AND agent_id = $2 AND status NOT IN ('completed', 'failed')`,
        [id, agentDbId, { retryable: outcome.retryable }, outcome.error],
      );
  if (r.rowCount) await db.query('SELECT pg_notify($1, $2)', [CHANNEL_COMMAND_DONE, id]);
  return (r.rowCount ?? 0) > 0;
}

/** A command nobody waits for any more (its start was cancelled) must not run later. */
export async function withdrawPending(db: Queryable, id: string, reason: string): Promise<void> {
  await db.query(
    `UPDATE agent_commands SET status = 'failed', error_message = $2, completed_at = NOW(), updated_at = NOW()
      WHERE id = $1 AND status = 'pending'`,
    [id, reason],
  );
}
