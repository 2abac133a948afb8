/**
 * The last keyboard/mouse input per session, as the VNC tunnels see it, written to
 * sessions.last_activity (v1's column) at most once per FLUSH_MS for all sessions at once. The
 * session workflow's idle timer reads it when it fires: typing keeps a session alive, an open but
 * untouched viewer does not.
 */
import type { Pool } from 'pg';
import type { Logger } from '../../config/log';

const FLUSH_MS = 5000;

export class InputTracker {
  private pending = new Map<string, number>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly pool: Pool,
    private readonly log: Logger,
    flushMs = FLUSH_MS,
  ) {
    this.timer = setInterval(() => void this.flush(), flushMs).unref();
  }

  /** Called by a tunnel when a chunk from the viewer held input. */
  input(sessionId: string): void {
    this.pending.set(sessionId, Date.now());
  }

  async flush(): Promise<void> {
    if (!this.pending.size) return;
    const batch = this.pending;
    this.pending = new Map();
    try {
      await this.pool.query(
        `UPDATE sessions s SET last_activity = to_timestamp(v.t / 1000.0) AT TIME ZONE current_setting('TimeZone')
           FROM unnest($1::text[], $2::float8[]) AS v(id, t)
          WHERE s.id = v.id AND (s.last_activity IS NULL OR s.last_activity < to_timestamp(v.t / 1000.0) AT TIME ZONE current_setting('TimeZone'))`,
        [[...batch.keys()], [...batch.values()]],
      );
    } catch (err) {
      // Kept for the next flush (newer input wins); the idle timer errs towards keeping the session.
      for (const [id, t] of batch) if (!this.pending.has(id)) this.pending.set(id, t);
      this.log.warn('cannot record session input; retrying', { error: (err as Error).message });
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
  }
}
