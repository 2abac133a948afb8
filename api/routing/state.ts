/**
 * Cut-over routing, shared by the migration workflow (which writes it) and every API pod (which
 * reads it). It lives in Redis, not in the database: a rollback restores the database from its
 * backup, and the routing must survive that (it is what sends everyone back to v1).
 */
import { createHash } from 'node:crypto';

export const ROUTING_KEY = 'streamspace:migration:routing';

export interface RoutingState {
  /** v2: everyone here (no migration, or done); v1: everyone to v1; cohorts: the listed users and percent to v2. */
  mode: 'v1' | 'v2' | 'cohorts';
  v1ApiUrl: string;
  users: string[];
  percent: number;
  runId: string;
  cohort: string | null;
  updatedAt: string;
}

/** A stable bucket 0-99 per username, so a percentage cohort always holds the same users. */
export function userBucket(username: string): number {
  return createHash('sha256').update(username).digest().readUInt32BE(0) % 100;
}

export function routeFor(state: RoutingState | null, username: string): 'v1' | 'v2' {
  if (!state || state.mode === 'v2') return 'v2';
  if (state.mode === 'v1') return 'v1';
  return state.users.includes(username) || userBucket(username) < state.percent ? 'v2' : 'v1';
}
