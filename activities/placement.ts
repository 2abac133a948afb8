/**
 * Placement and the start command's payload, shared by the session activities and the gateway
 * (which issues a new session's start command in the transaction that creates it: see
 * api/routes/sessions.ts). Both run inside the caller's transaction; errors are Temporal
 * ApplicationFailures whose type says whether a retry can help (FailureType).
 */
import { ApplicationFailure } from '@temporalio/common';
import type { Platform, StartSessionData } from '../protocol/messages';
import { FailureType, SessionState } from '../workflows/session-api';
import { placementWhenFull } from '../config/env';
import { InvalidTemplateError, manifestSpec, templateToSpec } from './templates';
import { formatCpu, formatMemory, Queryable, Resources, sessionResources } from '../db/quota';

export interface Placement {
  agentDbId: string;
  agentId: string;
}

export interface PlacementDeps {
  /** An agent whose last heartbeat is older than this is not placed on (AGENT_HEARTBEAT_TIMEOUT). */
  heartbeatTimeoutMs: number;
  /** When every agent of the platform is full: keep the start queued (retry until its timeout) or fail it at once. */
  whenFull?: 'queue' | 'fail';
  /** The session is new (on no agent yet): skip the look at its current placement. */
  unplaced?: boolean;
  /** The session's CPU and memory when the caller knows them (a new session: its template's): not read again. */
  need?: Resources;
  /**
   * The caller records the agent on the session itself, in the statement that issues its command
   * (issueCommand's assignSession): the agent's lock is held one round trip less. Only for a new
   * session (unplaced, no interim state).
   */
  deferAssign?: boolean;
}

/** Agents locked and counted per placement in a large fleet (see placeSessionIn). */
const PLACEMENT_SAMPLE = 4;
/** Samples drawn when every agent of the previous one was held by another placement. */
const PLACEMENT_DRAWS = 3;
/** Up to this many online agents a placement considers them all. */
const PLACEMENT_FULL_SCAN = 8;

/** A session's row and its template's manifest, as startData reads them. */
export interface StartSource {
  username: string | null;
  user_id: string;
  template_name: string;
  persistent_home: boolean | null;
  home_volume: string | null;
  manifest: unknown;
}

/** What the agent needs to create the session: its user, template spec and home volume. */
export async function loadStartData(db: Queryable, sessionId: string): Promise<StartSessionData> {
  const r = await db.query<StartSource & Record<string, unknown>>(
    `SELECT u.username, s.user_id, s.template_name, s.persistent_home, s.platform_metadata->>'home_volume' AS home_volume, t.manifest
       FROM sessions s
       LEFT JOIN users u ON u.id::text = s.user_id
       LEFT JOIN template_catalog t ON t.name = s.template_name
      WHERE s.id = $1`,
    [sessionId],
  );
  const row = r.rows[0];
  if (!row) throw ApplicationFailure.nonRetryable(`session ${sessionId} does not exist`, FailureType.InvalidTemplate);
  return startData(row);
}

/** The start command's payload from what loadStartData reads (or the gateway already holds for a new session). */
export function startData(row: StartSource): StartSessionData {
  if (!row.manifest) throw ApplicationFailure.nonRetryable(`template "${row.template_name}" does not exist`, FailureType.InvalidTemplate);
  try {
    return {
      user: row.username ?? row.user_id,
      template: templateToSpec(row.template_name, manifestSpec(row.manifest)),
      persistent_home: row.persistent_home !== false,
      // Imported v1 sessions keep the home volume v1 gave them (home-<user>).
      ...(row.home_volume ? { home_volume: row.home_volume } : {}),
    };
  } catch (err) {
    if (err instanceof InvalidTemplateError) throw ApplicationFailure.nonRetryable(err.message, FailureType.InvalidTemplate);
    throw err;
  }
}

/**
 * Chooses an online agent of the platform with free capacity, inside the caller's transaction
 * (BEGIN done; the caller commits, or rolls back on a throw), and records it on the session. The
 * candidate agents are locked FOR NO KEY UPDATE: concurrent placements serialise on them and
 * cannot overfill an agent, while commands for sessions already there (their INSERT takes FOR KEY
 * SHARE on the agent through the foreign key) go on meanwhile. Idempotent: a session already
 * placed on an online agent keeps it. With `interim`, the same statement also writes the
 * session's state as recordSessionState would (state, agent, no error, the running clock).
 */
export async function placeSessionIn(
  client: Queryable,
  deps: PlacementDeps,
  sessionId: string,
  platform: Platform,
  interim?: SessionState,
): Promise<Placement> {
  const whenFull = deps.whenFull ?? placementWhenFull();
  if (deps.deferAssign && (!deps.unplaced || interim !== undefined)) throw new Error('placeSessionIn: deferAssign is for a new session only');
  const fresh = `a.status = 'online' AND a.last_heartbeat > NOW() - ($2::int * INTERVAL '1 millisecond')`;
  // Written as recordSessionState(interim) writes it (its quota reservation ends unless hibernated).
  const assign = (agentDbId: string) =>
    interim === undefined
      ? client.query('UPDATE sessions SET agent_id = $2, updated_at = NOW() WHERE id = $1', [sessionId, agentDbId])
      : client.query(
          `WITH released AS (DELETE FROM quota_reservations WHERE session_id = $1 AND $4::boolean)
           UPDATE sessions
              SET state = $3::varchar, agent_id = $2, error_message = NULL,
                  running_since = CASE WHEN $3::varchar <> 'running' THEN NULL
                                       WHEN state IS DISTINCT FROM 'running' OR running_since IS NULL THEN NOW()
                                       ELSE running_since END,
                  updated_at = NOW()
            WHERE id = $1`,
          [sessionId, agentDbId, interim, interim !== 'hibernated'],
        );
  const current = deps.unplaced
    ? { rows: [] }
    : await client.query<{ id: string; agent_id: string }>(
        `SELECT a.id, a.agent_id FROM sessions s JOIN agents a ON a.id = s.agent_id
      WHERE s.id = $1 AND a.platform = $3 AND ${fresh}`,
        [sessionId, deps.heartbeatTimeoutMs, platform],
      );
  if (current.rows[0]) {
    if (interim !== undefined) await assign(current.rows[0].id);
    return { agentDbId: current.rows[0].id, agentId: current.rows[0].agent_id };
  }
  // What this session needs (its own row: no lock needed, read before the agents are locked).
  const need = deps.need ?? (await resourcesOf(client, sessionId));
  // A large fleet: a few random online agents are locked and counted first (the power of d
  // choices keeps the load even), so a placement costs the same with 1,000 agents and 10,000
  // sessions as with 3 (it used to lock every agent and read every session); all of them only
  // when none of the sample has room. A small fleet (≤ PLACEMENT_FULL_SCAN agents) is always
  // placed on its least used agent.
  const sampleSql = `SELECT a.id, count(*) OVER () AS total FROM agents a WHERE a.platform = $1 AND ${fresh} ORDER BY random() LIMIT ${PLACEMENT_SAMPLE}`;
  const sample = await client.query<{ id: string; total: string }>(sampleSql, [platform, deps.heartbeatTimeoutMs]);
  if (Number(sample.rows[0]?.total ?? 0) > PLACEMENT_FULL_SCAN) {
    // The sampled agents another placement holds are skipped, not waited for (SKIP LOCKED): with
    // a hundred creators at once, waiting on each other's samples was most of a placement's time.
    // A sample whose agents are all held is drawn again; one that is locked but has no room
    // sends the placement to the full scan. The sample's locks are let go before all agents are
    // locked in id order (no deadlock).
    let ids = sample.rows.map((x) => x.id);
    for (let draw = 1; ; draw++) {
      await client.query('SAVEPOINT placement_sample');
      const r = await placeAmong(ids, true);
      if (r.placed) return r.placed;
      await client.query('ROLLBACK TO SAVEPOINT placement_sample');
      if (r.count > 0 || draw >= PLACEMENT_DRAWS) break;
      ids = (await client.query<{ id: string }>(sampleSql, [platform, deps.heartbeatTimeoutMs])).rows.map((x) => x.id);
    }
  }
  const all = await placeAmong(null);
  if (all.placed) return all.placed;
  const { count, withUse } = all;
  const bySessions = withUse.filter((c) => c.use.n < c.max);
  const resources =
    bySessions.length > 0
      ? ` (${bySessions.map((c) => `${c.agent_id}: cpu ${formatCpu(c.use.cpu)}${c.max_cpu !== null ? ` of ${formatCpu(Math.round(c.max_cpu * 1000))}` : ''}, memory ${formatMemory(c.use.memory)}${c.max_memory !== null ? ` of ${formatMemory(Math.round(c.max_memory * 2 ** 30))}` : ''}`).join('; ')}; this session needs cpu ${formatCpu(need.cpu)}, memory ${formatMemory(need.memory)})`
      : '';
  const why = count
    ? bySessions.length
      ? `no capacity: no online ${platform} agent has the CPU or memory left (MAX_CPU/MAX_MEMORY)${resources}`
      : `no capacity: all ${count} online ${platform} agent(s) are full`
    : `no ${platform} agent is online`;
  if (count && whenFull === 'fail') throw ApplicationFailure.nonRetryable(`cannot place session: ${why}`, FailureType.NoCapacity);
  // Retryable: the workflow keeps trying until an agent has room or the start times out.
  throw ApplicationFailure.retryable(`cannot place session: ${why}`, FailureType.NoAgentAvailable);

  /**
   * Places on the least used of `ids` (null: every online agent of the platform) that has room;
   * with `skipLocked`, among those of them no other placement holds.
   */
  async function placeAmong(ids: string[] | null, skipLocked = false) {
    // Each candidate agent is locked, then what runs on it is counted by
    // streamspace_agent_usage (migration 014), called on the row as it leaves the locking
    // subquery: a VOLATILE function's query takes a fresh snapshot, so in READ COMMITTED it sees
    // every placement committed while this one waited for the lock (the statement's own snapshot,
    // taken before the wait, would not), and concurrent placements cannot overfill an agent. One
    // round trip: the agent's lock is held for the choice, the assignment and the commit only.
    // Sessions, CPU and memory in use on each candidate (MAX_SESSIONS, MAX_CPU cores and
    // MAX_MEMORY GiB as the agent reported them): a session's resources are its own cpu/memory,
    // else its template's defaultResources. Counted in the database, one row per kind of session
    // (its cpu, memory and template), not one per session: an agent with hundreds of sessions
    // costs what one with ten does, and each template's manifest is read once.
    type Used = { n: number; cpu: string | null; memory: string | null; manifest: unknown };
    const candidates = await client.query<{ id: string; agent_id: string; max: number; max_cpu: number | null; max_memory: number | null; used: Used[] }>(
      `SELECT l.*, streamspace_agent_usage(l.id, $4) AS used
         FROM (SELECT a.id, a.agent_id, COALESCE((a.capacity->>'max_sessions')::int, 0) AS max,
                      (a.capacity->>'max_cpu')::float8 AS max_cpu, (a.capacity->>'max_memory')::float8 AS max_memory
                 FROM agents a
                WHERE a.platform = $1 AND ${fresh} AND ($3::uuid[] IS NULL OR a.id = ANY($3::uuid[]))
                ORDER BY a.id
                  FOR NO KEY UPDATE OF a${skipLocked ? ' SKIP LOCKED' : ''}) l`,
      [platform, deps.heartbeatTimeoutMs, ids, sessionId],
    );
    const total = (used: Used[]) => {
      const acc = { n: 0, cpu: 0, memory: 0 };
      for (const u of used) {
        const res = sessionResources(u);
        acc.n += u.n;
        acc.cpu += res.cpu * u.n;
        acc.memory += res.memory * u.n;
      }
      return acc;
    };
    const fits = (c: { id: string; max_cpu: number | null; max_memory: number | null }, u: { cpu: number; memory: number }) =>
      (c.max_cpu === null || u.cpu + need.cpu <= Math.round(c.max_cpu * 1000)) &&
      (c.max_memory === null || u.memory + need.memory <= Math.round(c.max_memory * 2 ** 30));
    const withUse = candidates.rows.map(({ used, ...c }) => ({ ...c, use: total(used) }));
    const chosen = withUse.filter((c) => c.use.n < c.max && fits(c, c.use)).sort((a, b) => a.use.n / a.max - b.use.n / b.max)[0];
    if (!chosen) return { placed: null, count: candidates.rowCount ?? 0, withUse };
    if (!deps.deferAssign) await assign(chosen.id);
    return { placed: { agentDbId: chosen.id, agentId: chosen.agent_id } as Placement, count: candidates.rowCount ?? 0, withUse };
  }
}

/** A session's CPU and memory: its own columns, else its template's (db/quota.ts sessionResources). */
async function resourcesOf(db: Queryable, sessionId: string): Promise<Resources> {
  const mine = await db.query<{ cpu: string | null; memory: string | null; manifest: unknown }>(
    `SELECT s.cpu, s.memory, t.manifest FROM sessions s LEFT JOIN template_catalog t ON t.name = s.template_name WHERE s.id = $1`,
    [sessionId],
  );
  return mine.rows[0] ? sessionResources(mine.rows[0]) : { cpu: 0, memory: 0 };
}
