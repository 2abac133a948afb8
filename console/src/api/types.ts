/**
 * Domain types, taken from the generated OpenAPI types (so a changed route breaks the type
 * check); where the gateway does not describe a response yet, the shape promised by
 * docs/CONSOLE.md stands in.
 */
import type { paths } from './openapi';

type Json<R> = R extends { content: { 'application/json': infer B } } ? B : never;
type Responses<P extends string, M extends string> = P extends keyof paths
  ? M extends keyof paths[P]
    ? paths[P][M] extends { responses: infer R }
      ? R
      : never
    : never
  : never;
/** The JSON body of a route's 200 (or 201) answer. */
type Ok<P extends string, M extends string> =
  Responses<P, M> extends infer R ? (R extends { 200: infer X } ? Json<X> : R extends { 201: infer X } ? Json<X> : never) : never;
type Item<T> = T extends ReadonlyArray<infer E> ? E : never;
/** T unless it is never/unknown/any (route without a response schema), else the contract's shape F. */
type Or<T, F> = [T] extends [never] ? F : unknown extends T ? F : T extends object ? T : F;

interface SessionContract {
  id: string;
  user: string;
  template: string;
  state: string;
  platform: string | null;
  agent_id: string | null;
  cluster_id: string | null;
  tags: string[];
  error: string | null;
  url: string;
  created_at: string;
  updated_at: string;
  last_activity?: string | null;
  transition?: string | null;
  progress?: string | null;
  platform_metadata?: Record<string, unknown>;
}
export type Session = Or<Item<Ok<'/api/v1/sessions', 'get'>>, SessionContract>;

interface TemplateContract {
  name: string;
  display_name: string;
  description?: string | null;
  category?: string | null;
  icon?: string | null;
  image?: string | null;
  tags?: string[] | null;
  source?: string | null;
  resources?: { cpu?: string | null; memory?: string | null } | null;
  manifest?: Record<string, unknown>;
}
export type Template = Or<Item<Ok<'/api/v1/templates', 'get'>>, TemplateContract>;
export type TemplateDetail = Or<Ok<'/api/v1/templates/{name}', 'get'>, TemplateContract>;

interface ValidationContract {
  valid: boolean;
  name?: string | null;
  errors: Array<{ path?: string; line?: number | null; message: string }>;
}
export type Validation = Or<Ok<'/api/v1/templates/validate', 'post'>, ValidationContract>;

interface AgentContract {
  agent_id: string;
  status: string;
  health: 'online' | 'warning' | 'offline' | string;
  heartbeat_age_s?: number | null;
  platform: string;
  region?: string | null;
  cluster_id?: string | null;
  capacity?: { max_sessions?: number | null; current_sessions?: number | null } | null;
  last_heartbeat?: string | null;
  metadata?: Record<string, unknown> | null;
  ha?: { identity?: string; leader?: boolean } | null;
}
export type Agent = Or<Item<Ok<'/api/v1/agents', 'get'>>, AgentContract>;

interface AgentTokenContract {
  id: string;
  description?: string | null;
  created_at?: string | null;
  expires_at?: string | null;
  revoked_at?: string | null;
  last_used_at?: string | null;
}
export type AgentToken = Or<Item<Ok<'/api/v1/agents/{agentId}/tokens', 'get'>>, AgentTokenContract>;

interface UserContract {
  id: string;
  username: string;
  email?: string | null;
  role: string;
  active: boolean;
  created_at?: string;
  quota?: { max_sessions?: number | null; max_cpu?: string | null; max_memory?: string | null } | null;
}
export type User = Or<Item<Ok<'/api/v1/users', 'get'>>, UserContract>;

interface RunContract {
  run_id: string;
  workflow_id?: string;
  status: string;
  phase?: string | null;
  started_at?: string | null;
  closed_at?: string | null;
  temporal_url?: string | null;
}
export type MigrationRun = Or<Item<Ok<'/api/v1/migrations', 'get'>>, RunContract>;

export interface MigrationProgressContract {
  runId?: string;
  strategy?: string;
  status: string;
  phase?: string | null;
  phases?: Array<{ name: string; status: string; startedAt?: string; endedAt?: string; detail?: string }>;
  import?: {
    total?: number;
    processed?: number;
    imported?: number;
    failed?: number;
    failures?: Array<{ kind?: string; id: string; namespace?: string | null; reason: string }>;
  };
  cohort?: string | null;
  awaitingApproval?: string | null;
  blockedReason?: string | null;
  decommissionAt?: string | null;
  rollback?: Array<{ step: string; status: string; detail?: string }>;
  plan?: string[];
  temporal_url?: string | null;
}
export type MigrationProgress = Or<Ok<'/api/v1/migrations/{runId}', 'get'>, MigrationProgressContract>;

export type SortKey = 'created_at' | 'updated_at' | 'last_activity' | 'state' | 'template' | 'user' | 'platform' | 'agent';
export type BulkAction = 'hibernate' | 'wake' | 'stop' | 'retry';
export interface BulkResult {
  id: string;
  ok: boolean;
  status?: number;
  state?: string | null;
  error?: string | null;
}
