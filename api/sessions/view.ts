/**
 * How a session looks from the API and the live stream: one SELECT (with the transition read from
 * the session's newest unfinished command), one presenter, and the server-side search / filter /
 * sort / keyset paging of the session list.
 */
import type { Pool } from 'pg';
import { HttpError } from '../errors';
import { decodeCursor, encodeCursor } from '../paging';
import { parseLifetime } from '../../config/env';

export interface SessionRow {
  id: string;
  /** users.id */
  user_id: string;
  username: string | null;
  template_name: string;
  state: string;
  platform: string | null;
  agent_id: string | null;
  agent_name: string | null;
  cluster_id: string | null;
  tags: string[] | null;
  platform_metadata: Record<string, unknown> | null;
  error_message: string | null;
  created_at: Date;
  updated_at: Date;
  last_activity: Date | null;
  running_since: Date | null;
  idle_timeout: string | null;
  max_session_duration: string | null;
  change_seq: string | null;
  open_command: string | null;
  open_status: string | null;
  open_progress: string | null;
}

const SESSION_COLUMNS = `s.id, s.user_id, u.username, s.template_name, s.state, s.platform, s.agent_id, a.agent_id AS agent_name,
         s.cluster_id, s.tags, s.platform_metadata, s.error_message, s.created_at, s.updated_at, s.last_activity,
         s.running_since, s.idle_timeout, s.max_session_duration, s.change_seq`;
const FROM_SESSIONS = `FROM sessions s
    LEFT JOIN agents a ON a.id = s.agent_id
    LEFT JOIN users u ON u.id::text = s.user_id`;
/** The session's open command (the transition under way), for the rows of `alias`. */
const openCommand = (alias: string) => `LEFT JOIN LATERAL (
      SELECT c.command_type, c.status, c.progress FROM agent_commands c
       WHERE c.session_id = ${alias}.id AND c.status IN ('pending', 'sent', 'ack')
       ORDER BY c.created_at DESC LIMIT 1) oc ON true`;
const OPEN_COLUMNS = `oc.command_type AS open_command, oc.status AS open_status, oc.progress AS open_progress`;

export const SELECT_SESSION = `
  SELECT ${SESSION_COLUMNS}, ${OPEN_COLUMNS}
    ${FROM_SESSIONS}
    ${openCommand('s')}`;

const TRANSITION: Record<string, string> = {
  start_session: 'starting',
  hibernate_session: 'hibernating',
  wake_session: 'waking',
  stop_session: 'stopping',
};

/** The transition under way, read from the row (the workflow's own view may be more precise). */
function transitionOf(row: SessionRow): { transition: string | null; progress: string | null } {
  if (row.open_command) {
    const agent = row.agent_name ?? 'the agent';
    const step =
      row.open_status === 'pending'
        ? `waiting for ${agent}`
        : row.open_status === 'sent'
          ? `${row.open_command} sent to ${agent}`
          : `${agent} is working on it`;
    return { transition: TRANSITION[row.open_command] ?? row.open_command, progress: row.open_progress ? `${step}: ${row.open_progress}` : step };
  }
  if (row.state === 'pending') return { transition: 'starting', progress: row.agent_id ? 'starting on the agent' : 'placing the session on an agent' };
  if (row.state === 'terminating') return { transition: 'stopping', progress: null };
  return { transition: null, progress: null };
}

const lifetimeMs = (v: string | null, fallback: string) => {
  try {
    return parseLifetime(v ?? fallback);
  } catch {
    return 0; // a value v1 wrote that is not a duration: not acted on (the workflow says so too)
  }
};

/**
 * Why a running session is still alive and when it will hibernate or stop: the same rule the
 * session workflow's timers follow (workflows/session.ts, runbook step 5).
 */
function lifetimeOf(row: SessionRow) {
  const idleMs = lifetimeMs(row.idle_timeout, '30m');
  const maxMs = lifetimeMs(row.max_session_duration, '8h');
  const running = row.state === 'running';
  const since = row.running_since ?? row.updated_at;
  const lastInput = row.last_activity;
  const idleFrom = lastInput && since && lastInput > since ? lastInput : since;
  const hibernatesAt = running && idleMs > 0 && idleFrom ? new Date(idleFrom.getTime() + idleMs) : null;
  const stopsAt = running && maxMs > 0 && since ? new Date(since.getTime() + maxMs) : null;
  const alive: 'not_running' | 'idle_disabled' | 'recent_input' | 'started_recently' = !running
    ? 'not_running'
    : idleMs === 0
      ? 'idle_disabled'
      : lastInput && since && lastInput > since
        ? 'recent_input'
        : 'started_recently';
  return {
    idle_timeout: row.idle_timeout ?? '30m',
    max_session_duration: row.max_session_duration ?? '8h',
    running_since: running ? since : null,
    last_input_at: lastInput,
    hibernates_at: hibernatesAt,
    stops_at: stopsAt,
    alive_because: alive,
  };
}

export function presentSession(row: SessionRow, admin: boolean) {
  const meta = { ...(row.platform_metadata ?? {}) };
  delete meta.vnc; // the session's internal address is the agent's business, not the browser's
  return {
    id: row.id,
    user: row.username ?? row.user_id,
    template: row.template_name,
    state: row.state,
    platform: row.platform,
    agent_id: row.agent_name,
    cluster_id: row.cluster_id,
    tags: row.tags ?? [],
    error: row.error_message,
    url: `/vnc-viewer/${encodeURIComponent(row.id)}`,
    created_at: row.created_at,
    updated_at: row.updated_at,
    last_activity: row.last_activity,
    lifetime: lifetimeOf(row),
    ...transitionOf(row),
    ...(admin ? { platform_metadata: meta } : {}),
  };
}
export type SessionView = ReturnType<typeof presentSession>;

/** Sort keys of the list; NULLs folded so keyset comparisons are total. */
const SORTS = {
  created_at: { expr: `COALESCE(s.created_at, 'epoch'::timestamp)`, cast: 'timestamp' },
  updated_at: { expr: `COALESCE(s.updated_at, s.created_at, 'epoch'::timestamp)`, cast: 'timestamp' },
  last_activity: { expr: `COALESCE(s.last_activity, s.updated_at, s.created_at, 'epoch'::timestamp)`, cast: 'timestamp' },
  state: { expr: `COALESCE(s.state, '')`, cast: 'text' },
  template: { expr: `COALESCE(s.template_name, '')`, cast: 'text' },
  user: { expr: `COALESCE(u.username, s.user_id)`, cast: 'text' },
  platform: { expr: `COALESCE(s.platform, '')`, cast: 'text' },
  agent: { expr: `COALESCE(a.agent_id, '')`, cast: 'text' },
} as const;
export type SessionSort = keyof typeof SORTS;
export const SESSION_SORTS = Object.keys(SORTS) as SessionSort[];
export const MAX_PAGE = 1000;

export interface ListParams {
  /** users.id of the caller when not an admin (they see their own sessions only). */
  ownerId?: string;
  user?: string;
  state?: string;
  platform?: string;
  tag?: string;
  agent?: string;
  q?: string;
  sort?: SessionSort;
  order?: 'asc' | 'desc';
  limit?: number;
  cursor?: string;
}

interface Cursor {
  s: SessionSort;
  o: 'asc' | 'desc';
  k: string;
  i: string;
}

const likeEscape = (v: string) => v.replace(/[\\%_]/g, (c) => `\\${c}`);

interface Statement {
  text: string;
  values: unknown[];
}

/** The statements listSessions sends: the page (one row more than the limit) and the count. */
export function listSessionsQueries(p: ListParams): { page: Statement; count: Statement; limit: number; sort: SessionSort; order: 'asc' | 'desc' } {
  const sort = p.sort ?? 'created_at';
  const order = p.order ?? 'desc';
  const limit = Math.min(Math.max(p.limit ?? MAX_PAGE, 1), MAX_PAGE);
  const { expr, cast } = SORTS[sort];
  const where: string[] = [`s.state IS DISTINCT FROM 'deleted'`]; // v1's soft delete: v1 hides these rows too
  const args: unknown[] = [];
  const add = (sql: string, ...vs: unknown[]) => {
    let out = sql;
    for (const v of vs) {
      args.push(v);
      out = out.replace('?', `$${args.length}`);
    }
    where.push(out);
  };
  if (p.ownerId !== undefined) add('s.user_id = ?', p.ownerId);
  else if (p.user) add('u.username = ?', p.user);
  if (p.state) add('s.state = ?', p.state);
  if (p.platform) add('s.platform = ?', p.platform);
  if (p.tag) add('s.tags @> ?::jsonb', JSON.stringify([p.tag]));
  if (p.agent) add('a.agent_id = ?', p.agent);
  if (p.q) {
    const like = `%${likeEscape(p.q)}%`;
    add('(s.id LIKE ? OR s.template_name ILIKE ? OR u.username ILIKE ? OR a.agent_id ILIKE ?)', `${likeEscape(p.q)}%`, like, like, like);
  }
  const filter = where.join(' AND ');
  const countArgs = [...args];
  if (p.cursor) {
    const c = decodeCursor<Cursor>(p.cursor, (c) => typeof c.k === 'string' && typeof c.i === 'string' && c.s in SORTS && (c.o === 'asc' || c.o === 'desc'));
    if (c.s !== sort || c.o !== order) throw new HttpError(400, `cursor was made for sort=${c.s}&order=${c.o}; ask again without it`);
    add(`(${expr}, s.id) ${order === 'desc' ? '<' : '>'} (?::${cast}, ?)`, c.k, c.i);
  }
  args.push(limit + 1);
  const dir = order === 'desc' ? 'DESC' : 'ASC';
  // The page first (an index scan for the default order), then the open command of its rows
  // only, not of every session.
  return {
    page: {
      text: `WITH page AS (
         SELECT ${SESSION_COLUMNS}, (${expr})::text AS sort_key, ${expr} AS sort_value ${FROM_SESSIONS}
          WHERE ${where.join(' AND ')} ORDER BY ${expr} ${dir}, s.id ${dir} LIMIT $${args.length})
       SELECT page.*, ${OPEN_COLUMNS} FROM page ${openCommand('page')}
        ORDER BY page.sort_value ${dir}, page.id ${dir}`,
      values: args,
    },
    // Joins only when a filter needs them.
    count: { text: `SELECT count(*)::int AS n ${/\b[au]\./.test(filter) ? FROM_SESSIONS : 'FROM sessions s'} WHERE ${filter}`, values: countArgs },
    limit,
    sort,
    order,
  };
}

/** One page of the list, sorted and filtered in the database, plus the total and the next cursor. */
export async function listSessions(pool: Pool, p: ListParams): Promise<{ rows: SessionRow[]; total: number; next: string | null }> {
  const q = listSessionsQueries(p);
  const { limit, sort, order } = q;
  const [page, count] = await Promise.all([
    pool.query<SessionRow & { sort_key: string }>(q.page.text, q.page.values),
    pool.query<{ n: number }>(q.count.text, q.count.values),
  ]);
  const rows = page.rows.slice(0, limit);
  const last = rows[rows.length - 1];
  const next = page.rows.length > limit && last ? encodeCursor({ s: sort, o: order, k: last.sort_key, i: last.id } satisfies Cursor) : null;
  return { rows, total: count.rows[0].n, next };
}

/** Rows by id (the live stream's batch load); `ownerId` limits them to one user's. */
export async function loadSessions(pool: Pool, ids: string[]): Promise<SessionRow[]> {
  if (!ids.length) return [];
  return (await pool.query<SessionRow>(`${SELECT_SESSION} WHERE s.id = ANY($1::text[])`, [ids])).rows;
}

/** Rows changed after `seq` (a reconnecting stream's catch-up), oldest first, at most `limit`. */
export async function sessionsChangedSince(pool: Pool, seq: string, limit: number, ownerId?: string): Promise<SessionRow[]> {
  const args: unknown[] = [seq, limit];
  const own = ownerId !== undefined ? `AND s.user_id = $3` : '';
  if (ownerId !== undefined) args.push(ownerId);
  return (await pool.query<SessionRow>(`${SELECT_SESSION} WHERE s.change_seq > $1::bigint ${own} ORDER BY s.change_seq LIMIT $2`, args)).rows;
}
