/**
 * Login throttling shared by every API pod (a PostgreSQL counter, fixed window): each attempt
 * counts against its username and its client address before the password is checked; a success
 * clears the username's counter and gives the address its attempt back, so only failures add up.
 * Over the limit the attempt is refused with 429 and the seconds until the window ends.
 */
import type { Pool } from 'pg';

export interface ThrottleLimits {
  perUser: number;
  perAddress: number;
  windowMs: number;
}

export type ThrottleVerdict = { allowed: true } | { allowed: false; retryAfterSeconds: number; reason: string };

const userKey = (username: string) => `user:${username}`.slice(0, 320);
const addrKey = (address: string) => `addr:${address}`.slice(0, 320);

export class LoginThrottle {
  constructor(
    private readonly pool: Pool,
    private readonly limits: ThrottleLimits,
  ) {}

  /** Counts one attempt for (username, address); refuses when either is over its limit. */
  async attempt(username: string, address: string): Promise<ThrottleVerdict> {
    const keys = [userKey(username), addrKey(address)];
    const r = await this.pool.query<{ key: string; attempts: number; remaining: string }>(
      `INSERT INTO login_throttle AS t (key, window_start, attempts)
       SELECT k, NOW(), 1 FROM unnest($1::text[]) AS k
       ON CONFLICT (key) DO UPDATE SET
         attempts = CASE WHEN t.window_start <= NOW() - make_interval(secs => $2) THEN 1 ELSE t.attempts + 1 END,
         window_start = CASE WHEN t.window_start <= NOW() - make_interval(secs => $2) THEN NOW() ELSE t.window_start END
       RETURNING t.key, t.attempts, EXTRACT(EPOCH FROM (t.window_start + make_interval(secs => $2) - NOW()))::text AS remaining`,
      [keys, this.limits.windowMs / 1000],
    );
    let retry = 0;
    const reasons: string[] = [];
    for (const row of r.rows) {
      const perUser = row.key.startsWith('user:');
      const limit = perUser ? this.limits.perUser : this.limits.perAddress;
      if (row.attempts > limit) {
        retry = Math.max(retry, Math.max(1, Math.ceil(Number(row.remaining))));
        reasons.push(perUser ? 'for this username' : 'from this address');
      }
    }
    if (!reasons.length) return { allowed: true };
    return { allowed: false, retryAfterSeconds: retry, reason: `too many failed sign-in attempts ${reasons.join(' and ')}` };
  }

  /** A correct password: the username starts afresh and the address gets this attempt back. */
  async succeeded(username: string, address: string): Promise<void> {
    await this.pool.query(
      `WITH d AS (DELETE FROM login_throttle WHERE key = $1)
       UPDATE login_throttle SET attempts = GREATEST(attempts - 1, 0) WHERE key = $2`,
      [userKey(username), addrKey(address)],
    );
  }

  /** Drops counters whose window ended long ago. */
  async sweep(): Promise<void> {
    await this.pool.query(`DELETE FROM login_throttle WHERE window_start < NOW() - make_interval(secs => $1)`, [(2 * this.limits.windowMs) / 1000]);
  }
}
