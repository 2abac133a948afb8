/**
 * What the session workflow's idle and duration timers need, read fresh from the session row
 * each time a timer fires: the limits (v1's columns, editable per session) and the last input the
 * gateway saw on the session's VNC tunnel (sessions.last_activity).
 */
import type { Pool } from 'pg';
import { parseLifetime } from '../config/env';

export interface SessionLifetime {
  /** 0: never hibernated for idleness. */
  idleTimeoutMs: number;
  /** 0: no limit. */
  maxDurationMs: number;
  /** Epoch ms of the last keyboard/mouse input; null: none yet. */
  lastInputAt: number | null;
  /** Epoch ms the session last became running; null: not running. */
  runningSince: number | null;
  /** A limit the row holds that is not a duration (the workflow reports it and does not act on it). */
  invalid: string | null;
}

export function createLifetimeActivities(deps: { pool: Pool }) {
  return {
    async sessionLifetime(sessionId: string): Promise<SessionLifetime | null> {
      // Absolute times from the database: the columns hold local time of the database's TimeZone
      // (as NOW() and the gateway write them), whatever the worker's own time zone is.
      const r = await deps.pool.query<{ idle_timeout: string | null; max_session_duration: string | null; last: number | null; since: number | null }>(
        `SELECT idle_timeout, max_session_duration,
                (EXTRACT(EPOCH FROM last_activity AT TIME ZONE current_setting('TimeZone')) * 1000)::float8 AS last,
                (EXTRACT(EPOCH FROM running_since AT TIME ZONE current_setting('TimeZone')) * 1000)::float8 AS since
           FROM sessions WHERE id = $1`,
        [sessionId],
      );
      const row = r.rows[0];
      if (!row) return null;
      let invalid: string | null = null;
      const parse = (v: string | null, name: string) => {
        try {
          return parseLifetime(v, name);
        } catch (err) {
          invalid = (err as Error).message;
          return 0;
        }
      };
      return {
        idleTimeoutMs: parse(row.idle_timeout, 'idle_timeout'),
        maxDurationMs: parse(row.max_session_duration, 'max_session_duration'),
        lastInputAt: row.last === null ? null : Math.round(row.last),
        runningSince: row.since === null ? null : Math.round(row.since),
        invalid,
      };
    },
  };
}
export type LifetimeActivities = ReturnType<typeof createLifetimeActivities>;
