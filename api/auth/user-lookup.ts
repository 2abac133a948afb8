/**
 * The users-table check behind every authenticated request (api/auth/plugin.ts), batched: the
 * requests waiting for a check share one `username = ANY($1)` query instead of one query each.
 *
 * Nothing is cached. A request's check is answered only by a query sent after the request asked,
 * so a user disabled, demoted or signed out everywhere (tokens_valid_after) is refused by the next
 * request exactly as with a query per request.
 *
 * One batch at a time: while a query is out, new requests wait and go together in the next one
 * (for at most WAIT_FOR_PREVIOUS_MS: a query that hangs on its connection does not hold up every
 * sign-in check; the next batch then goes on another connection).
 * When 100 clients call at once (issue 14's scale bench, the start of a phase) that was 100 queries
 * queued for the read pool's 5 connections, with every other read (the list, a get) behind them
 * for up to 350 ms; now it is two or three queries. When calls are few, the one query is sent at
 * once, as before (after the current I/O round: setImmediate).
 */
import DataLoader from 'dataloader';
import type { Pool } from 'pg';

export interface UserAuthRow {
  uid: string;
  role: string;
  active: boolean | null;
  tokens_valid_after: Date | null;
}

export interface UserLookup {
  /** The user's row as the database has it now; undefined when there is no such user. */
  load(username: string): Promise<UserAuthRow | undefined>;
}

/** More names than this in one query go in more than one (a bound on the statement's parameter). */
const MAX_BATCH = 1000;
/** How long the next batch waits for the one being answered before it is sent anyway. */
export const WAIT_FOR_PREVIOUS_MS = 1000;

/** The batch's statement: $1 is the names (text[]). */
export const USERS_BY_NAME = 'SELECT username, id::text AS uid, role, active, tokens_valid_after FROM users WHERE username = ANY($1::text[])';

export function createUserLookup(pool: Pick<Pool, 'query'>): UserLookup {
  // The batch being queried now, if any: the next one is sent when it is answered.
  let inFlight: Promise<unknown> | null = null;
  const loader = new DataLoader<string, UserAuthRow | undefined>(
    async (names) => {
      const query = pool.query<UserAuthRow & { username: string }>(USERS_BY_NAME, [[...new Set(names)]]);
      const settled = () => {
        if (inFlight === done) inFlight = null;
      };
      const done: Promise<void> = query.then(settled, settled);
      inFlight = done;
      const byName = new Map((await query).rows.map((r) => [r.username, r] as const));
      return names.map((n) => byName.get(n));
    },
    {
      cache: false,
      maxBatchSize: MAX_BATCH,
      // The batch stays open (takes more names) until this calls `send`.
      batchScheduleFn: (send) => {
        const previous = inFlight;
        if (!previous) return void setImmediate(send);
        let sent = false;
        const go = () => {
          if (sent) return;
          sent = true;
          clearTimeout(timer);
          setImmediate(send);
        };
        const timer = setTimeout(go, WAIT_FOR_PREVIOUS_MS);
        void previous.then(go);
      },
    },
  );
  return { load: (username) => loader.load(username) };
}
