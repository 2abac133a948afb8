/**
 * Cut-over routing, shared by the migration (which writes it) and every API pod (which reads it).
 * It lives in Redis, not in the database: a rollback may restore the database from its backup,
 * and the routing must survive that (it is what sends everyone back to v1).
 */
import { createHash } from 'node:crypto';

export const ROUTING_KEY = 'streamspace:migration:routing';

/** Who is on v2: v2 everyone, v1 nobody, cohorts the listed users plus a stable percentage. */
export interface RouteSet {
  mode: 'v1' | 'v2' | 'cohorts';
  users: string[];
  percent: number;
}

export interface RoutingState extends RouteSet {
  v1ApiUrl: string;
  runId: string;
  cohort: string | null;
  updatedAt: string;
}

/** A stable bucket 0-99 per username, so a percentage cohort always holds the same users. */
export function userBucket(username: string): number {
  return createHash('sha256').update(username).digest().readUInt32BE(0) % 100;
}

export function routeFor(state: RouteSet | null, username: string): 'v1' | 'v2' {
  if (!state || state.mode === 'v2') return 'v2';
  if (state.mode === 'v1') return 'v1';
  return state.users.includes(username) || userBucket(username) < state.percent ? 'v2' : 'v1';
}

/** The users a routing change moves from v1 to v2. */
export function moves(before: RouteSet, after: RouteSet, username: string): boolean {
  return routeFor(before, username) === 'v1' && routeFor(after, username) === 'v2';
}
