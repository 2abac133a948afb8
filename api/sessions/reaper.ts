/**
 * The session reaper (after Coder's job reaper): a session row whose workflow start was never
 * confirmed (the gateway died between its INSERT and the start, or Temporal answered too late)
 * is adopted: its workflow is started (idempotent: `session/<id>` already running or finished is
 * left alone) and the row marked confirmed. Runs on every gateway pod; rows are claimed with
 * SKIP LOCKED, so two pods never adopt the same one at once.
 */
import type { Pool } from 'pg';
import { SessionWorkflowSettings, startSessionWorkflow } from '../../activities/session-adoption';
import type { Logger } from '../../config/log';
import type { Platform } from '../../protocol/messages';

export interface ReaperOptions {
  pool: Pool;
  workflows: SessionWorkflowSettings;
  log: Logger;
  /** A row unconfirmed for longer than this is adopted (the gateway's own start takes milliseconds). */
  graceMs: number;
  intervalMs: number;
}

export class SessionReaper {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<number> | null = null;

  constructor(private readonly o: ReaperOptions) {}

  start(): void {
    this.timer = setInterval(
      () => void this.runOnce().catch((err) => this.o.log.warn('session reaper failed; retrying', { error: (err as Error).message })),
      this.o.intervalMs,
    );
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Adopts up to 100 unconfirmed rows; returns how many. */
  runOnce(): Promise<number> {
    this.running ??= this.adopt().finally(() => (this.running = null));
    return this.running;
  }

  private async adopt(): Promise<number> {
    const client = await this.o.pool.connect();
    try {
      await client.query('BEGIN');
      const rows = await client.query<{ id: string; username: string | null; user_id: string; template_name: string; platform: Platform | null }>(
        `SELECT s.id, u.username, s.user_id, s.template_name, s.platform
           FROM sessions s LEFT JOIN users u ON u.id::text = s.user_id
          WHERE s.workflow_confirmed = false AND s.state = 'pending' AND s.created_at < NOW() - ($1::int * INTERVAL '1 millisecond')
          ORDER BY s.created_at LIMIT 100
            FOR UPDATE OF s SKIP LOCKED`,
        [this.o.graceMs],
      );
      for (const r of rows.rows) {
        const started = await startSessionWorkflow(this.o.workflows, {
          sessionId: r.id,
          user: r.username ?? r.user_id,
          template: r.template_name,
          platform: r.platform ?? 'docker',
        });
        if (started) this.o.log.warn('adopted a session whose workflow start was never confirmed', { session: r.id });
        await client.query('UPDATE sessions SET workflow_confirmed = true WHERE id = $1', [r.id]);
      }
      // A row that moved on from pending has a workflow (only it changes the state).
      await client.query(`UPDATE sessions SET workflow_confirmed = true WHERE workflow_confirmed = false AND state <> 'pending'`);
      await client.query('COMMIT');
      return rows.rowCount ?? 0;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      client.release();
    }
  }
}
