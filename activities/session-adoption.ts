/**
 * Starting session workflows, one place for both ways a session comes to v2: a new session (the
 * gateway's POST /sessions) and an imported v1 session (the migration's import and
 * POST /sessions/bulk-import), which becomes a managed v2 session, hibernated and not yet placed:
 * waking it on v2 creates it there with the home volume v1 gave it.
 *
 * Idempotent: the workflow id is `session/<id>`, so a repeated adoption finds the running
 * workflow and leaves it alone.
 */
import { Client, WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import type { Pool } from 'pg';
import type { Platform } from '../protocol/messages';
import { SA } from '../workflows/search-attributes';
import { CarriedState, SESSION_WORKFLOW_TYPE, sessionWorkflowId, SessionWorkflowInput } from '../workflows/session-api';

export interface SessionWorkflowSettings {
  temporal: Client;
  taskQueue: string;
  startTimeoutMs: number;
  historyLimit: number;
  /**
   * The workflow keeps the session's state in the StreamSpaceState search attribute (an upsert,
   * so a Temporal history event and a visibility write, per operation). Off by default
   * (SESSION_STATE_SEARCH_ATTRIBUTE): the state is the session row's, and the workflow's status query.
   */
  stateSearchAttribute?: boolean;
}

export interface AdoptionDeps extends SessionWorkflowSettings {
  pool: Pool;
}

export interface SessionToStart {
  sessionId: string;
  /** Username (labels, memo, the default home volume name). */
  user: string;
  template: string;
  platform: Platform;
  /** Absent: a new session, started now. Present: the workflow resumes in this state (imported). */
  carried?: CarriedState;
  /** A retried session: the commands it already had (see SessionWorkflowInput.firstCommandSeq). */
  firstCommandSeq?: number;
  /** The agent (agent_id) the gateway placed a new session on as it created it (SessionWorkflowInput.placedOn). */
  placedOn?: string;
}

/** Starts `session/<id>`; `false` when it is already running (nothing done). */
export async function startSessionWorkflow(s: SessionWorkflowSettings, t: SessionToStart): Promise<boolean> {
  const state = t.carried?.state ?? 'pending';
  const input: SessionWorkflowInput = {
    sessionId: t.sessionId,
    user: t.user,
    template: t.template,
    platform: t.platform,
    startTimeoutMs: s.startTimeoutMs,
    maxHistoryEvents: s.historyLimit,
    ...(t.carried ? { carried: t.carried } : {}),
    ...(t.firstCommandSeq ? { firstCommandSeq: t.firstCommandSeq } : {}),
    ...(s.stateSearchAttribute ? {} : { stateSearchAttribute: false }),
    ...(t.placedOn ? { placedOn: t.placedOn } : {}),
  };
  try {
    await s.temporal.workflow.start(SESSION_WORKFLOW_TYPE, {
      workflowId: sessionWorkflowId(t.sessionId),
      taskQueue: s.taskQueue,
      args: [input],
      // With stateSearchAttribute, the state is the StreamSpaceState search attribute (the workflow keeps it current there).
      memo: { sessionId: t.sessionId, user: t.user, template: t.template, platform: t.platform, ...(t.carried ? { imported: true } : {}) },
      typedSearchAttributes: [
        { key: SA.sessionId, value: t.sessionId },
        { key: SA.user, value: t.user },
        { key: SA.platform, value: t.platform },
        ...(s.stateSearchAttribute ? [{ key: SA.state, value: state }] : []),
        ...(t.placedOn ? [{ key: SA.agent, value: t.placedOn }] : []),
      ],
    });
    return true;
  } catch (err) {
    if (err instanceof WorkflowExecutionAlreadyStartedError) return false;
    throw err;
  }
}

export interface AdoptionResult {
  adopted: number;
  failures: Array<{ id: string; reason: string }>;
}

const PARALLEL = 16;

/**
 * Gives each imported session (by id) its workflow. Hibernated sessions get a hibernated,
 * unplaced workflow; terminated ones stay history (no workflow: nothing runs). Rows that already
 * have a workflow are left alone.
 */
export async function adoptSessions(deps: AdoptionDeps, ids: string[]): Promise<AdoptionResult> {
  const result: AdoptionResult = { adopted: 0, failures: [] };
  if (!ids.length) return result;
  const r = await deps.pool.query<{ id: string; username: string | null; user_id: string; template_name: string; platform: string | null; state: string }>(
    `SELECT s.id, u.username, s.user_id, s.template_name, s.platform, s.state
       FROM sessions s LEFT JOIN users u ON u.id::text = s.user_id
      WHERE s.id = ANY($1::text[]) AND s.workflow_id IS NULL`,
    [ids],
  );
  const rows = r.rows.filter((row) => row.state !== 'terminated');
  for (let i = 0; i < rows.length; i += PARALLEL) {
    await Promise.all(
      rows.slice(i, i + PARALLEL).map(async (row) => {
        if (row.state !== 'hibernated') {
          result.failures.push({ id: row.id, reason: `an imported session must be hibernated or terminated, not ${row.state}` });
          return;
        }
        if (!row.username) {
          result.failures.push({ id: row.id, reason: `owner ${row.user_id} is not a user` });
          return;
        }
        try {
          await startSessionWorkflow(deps, {
            sessionId: row.id,
            user: row.username,
            template: row.template_name,
            platform: row.platform === 'docker' ? 'docker' : 'kubernetes',
            carried: { state: 'hibernated', agentDbId: null, agentId: null, commandSeq: 0, runs: 0 },
          });
          await deps.pool.query('UPDATE sessions SET workflow_id = $2 WHERE id = $1', [row.id, sessionWorkflowId(row.id)]);
          result.adopted++;
        } catch (err) {
          result.failures.push({ id: row.id, reason: `workflow not started: ${(err as Error).message}` });
        }
      }),
    );
  }
  return result;
}
