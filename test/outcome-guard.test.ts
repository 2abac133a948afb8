/**
 * A command's outcome writes the session's state only if that command is still the session's
 * newest and was not withdrawn: a late outcome (a stop was issued meanwhile) must not overwrite
 * what the workflow decided since. The check is in the statement that writes the state (one round
 * trip; no gap between the check and the write), and it guards the quota reservation's release too.
 *
 * On the real stack's PostgreSQL, with a session a real workflow started on a fake agent; the
 * newer command is written as the workflow's stop would write it (a higher generation).
 * Checked red: with the check left out of the statement, the superseded outcome is written.
 */
import { randomUUID } from 'node:crypto';
import { createSessionActivities } from '../activities/session-activities';
import { CommandWaiter } from '../activities/command-waiter';
import { createLogger } from '../config/log';
import { CHANNEL_COMMAND_DONE } from '../db/commands';
import { PgListener } from '../db/listener';
import { Stack } from './harness/stack';

jest.setTimeout(120_000);

describe("a command's outcome is written only while the command is the session's newest", () => {
  const stack = new Stack('outcome-guard');
  const AGENT = 'fake-guard-1';
  let listener: PgListener;
  let acts: ReturnType<typeof createSessionActivities>;
  let sessionId: string;
  let start: { agent_id: string; generation: number; idempotency_key: string; user_id: string };

  beforeAll(async () => {
    await stack.start();
    await stack.startFakeAgent(AGENT);
    const admin = await stack.login();
    const c = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin);
    expect(c.status).toBe(201);
    sessionId = c.body.id;
    await stack.waitForState(admin, sessionId, 'running');
    start = (
      await stack.pool.query(
        `SELECT c.agent_id, c.generation, c.idempotency_key, s.user_id::text FROM agent_commands c JOIN sessions s ON s.id = c.session_id
          WHERE c.session_id = $1 AND c.command_type = 'start_session'`,
        [sessionId],
      )
    ).rows[0];
    listener = new PgListener(stack.databaseUrl, [CHANNEL_COMMAND_DONE], createLogger('outcome-guard-test', 'warn'));
    await listener.start();
    acts = createSessionActivities({ pool: stack.pool, waiter: new CommandWaiter(listener), heartbeatTimeoutMs: 30_000 });
  });

  afterAll(async () => {
    await listener?.close();
    await stack.stop();
  });

  const row = async () =>
    (
      await stack.pool.query<{ state: string; reserved: boolean }>(
        `SELECT s.state, EXISTS (SELECT 1 FROM quota_reservations q WHERE q.session_id = s.id::text) AS reserved FROM sessions s WHERE s.id = $1`,
        [sessionId],
      )
    ).rows[0];
  // A failed wake's outcome: hibernated with its error, which also ends the session's reservation.
  const outcome = { sessionId: '', state: 'hibernated' as const, agentDbId: null, error: 'late outcome' };

  test('superseded by a newer command, or withdrawn: nothing written, the reservation kept; the newest: written', async () => {
    await stack.pool.query(`INSERT INTO quota_reservations (session_id, user_id, expires_at) VALUES ($1, $2, NOW() + INTERVAL '1 hour')`, [
      sessionId,
      start.user_id,
    ]);
    const newer = { generation: start.generation + 1, idempotencyKey: `guard-${randomUUID()}` };
    // The newer command as a stop issues it (written finished, so no agent is sent it).
    await stack.pool.query(
      `INSERT INTO agent_commands (agent_id, session_id, command_type, command_data, status, idempotency_key, generation, completed_at)
       VALUES ($1, $2, 'stop_session', '{}', 'completed', $3, $4, NOW())`,
      [start.agent_id, sessionId, newer.idempotencyKey, newer.generation],
    );

    const late = await acts.recordSessionState({ ...outcome, sessionId }, { generation: start.generation, idempotencyKey: start.idempotency_key });
    expect(late).toBe(false);
    expect(await row()).toEqual({ state: 'running', reserved: true });

    await stack.pool.query(`UPDATE agent_commands SET withdrawn_at = NOW() WHERE idempotency_key = $1`, [newer.idempotencyKey]);
    expect(await acts.recordSessionState({ ...outcome, sessionId }, newer)).toBe(false);
    expect(await row()).toEqual({ state: 'running', reserved: true });

    await stack.pool.query(`UPDATE agent_commands SET withdrawn_at = NULL WHERE idempotency_key = $1`, [newer.idempotencyKey]);
    expect(await acts.recordSessionState({ ...outcome, sessionId }, newer)).toBe(true);
    expect(await row()).toEqual({ state: 'hibernated', reserved: false });
  });
});
