/**
 * Reconciliation, the comparison half: what an agent reports it runs against each session's
 * desired state. Pure (no I/O), so every rule is visible here; the repair itself is the session
 * workflow's decision (workflows/session.ts), reached through api/agents/repair.ts.
 */
import type { ObservedState, ReportedSession } from '../../protocol/messages';

export type Observed = ObservedState | 'absent';

export interface Divergence {
  sessionId: string;
  /**
   * orphan: the agent runs something no live session of this agent should have (terminated,
   * failed, unknown, or placed elsewhere) → remove it. missing: a session that should exist on
   * the agent is gone or failed there. state_mismatch: running where it should be hibernated, or
   * the reverse.
   */
  kind: 'orphan' | 'missing' | 'state_mismatch';
  desired: string;
  observed: Observed;
}

export interface KnownSession {
  id: string;
  state: string;
  agent_id: string | null;
}

/** Sessions in these states are between two steps of their workflow: it is in charge, no repair. */
const IN_TRANSITION = new Set(['pending', 'terminating']);

export function classifyReport(agentDbId: string, known: KnownSession[], reported: ReportedSession[]): Divergence[] {
  const byId = new Map(known.map((k) => [k.id, k]));
  const out: Divergence[] = [];
  const seen = new Set<string>();
  for (const r of reported) {
    seen.add(r.session_id);
    const row = byId.get(r.session_id);
    if (!row || row.agent_id !== agentDbId || ['terminated', 'failed', 'deleted'].includes(row.state)) {
      out.push({
        sessionId: r.session_id,
        kind: 'orphan',
        desired: row ? `${row.state}${row.agent_id !== agentDbId ? ' elsewhere' : ''}` : 'unknown',
        observed: r.state,
      });
      continue;
    }
    if (IN_TRANSITION.has(row.state) || r.state === 'starting') continue;
    if (row.state === 'running' && r.state === 'failed') out.push({ sessionId: row.id, kind: 'missing', desired: 'running', observed: 'failed' });
    else if (row.state === 'running' && r.state === 'hibernated')
      out.push({ sessionId: row.id, kind: 'state_mismatch', desired: 'running', observed: 'hibernated' });
    else if (row.state === 'hibernated' && r.state === 'running')
      out.push({ sessionId: row.id, kind: 'state_mismatch', desired: 'hibernated', observed: 'running' });
  }
  for (const row of known) {
    if (seen.has(row.id) || row.agent_id !== agentDbId) continue;
    if (row.state === 'running' || row.state === 'hibernated') out.push({ sessionId: row.id, kind: 'missing', desired: row.state, observed: 'absent' });
  }
  return out;
}
