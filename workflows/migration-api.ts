/**
 * The v1 → v2 migration workflow's public surface (shared by the workflow, the gateway and the
 * operator CLI). Plain types and Temporal definitions only.
 */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';

export const MIGRATION_WORKFLOW_TYPE = 'migrationWorkflow';
export const migrationWorkflowId = (runId: string): string => `migration/${runId}`;

export type Strategy = 'blue-green' | 'fresh-install' | 'in-place';

export type PhaseName = 'preflight' | 'backup' | 'maintenance' | 'schema' | 'agents' | 'import' | 'cutover' | 'decommission';

/** Which phases each of the spec's strategies runs, in order. */
export const STRATEGY_PHASES: Record<Strategy, PhaseName[]> = {
  'blue-green': ['preflight', 'backup', 'schema', 'agents', 'import', 'cutover', 'decommission'],
  // Users recreate sessions on v2: nothing is imported; traffic switches at once.
  'fresh-install': ['preflight', 'backup', 'schema', 'agents', 'cutover', 'decommission'],
  // A maintenance window: v1 is stopped first, then everything moves at once.
  'in-place': ['preflight', 'backup', 'maintenance', 'schema', 'agents', 'import', 'cutover', 'decommission'],
};

export interface Cohort {
  name: string;
  /** Users routed to v2 in this cohort (in addition to earlier cohorts). */
  users?: string[];
  /** Or a share of all users, by a stable hash of the username (0-100). */
  percent?: number;
}

/**
 * Where the worker finds a database, without its secret: workflow input, history, memo and API
 * responses never hold a password. Either `urlRef` (the whole URL from the worker's environment or
 * a mounted Secret file), or `url` without a password plus an optional `passwordRef`.
 * A ref is `env:NAME` (NAME one of DATABASE_URL, V1_/V2_DATABASE_URL, V1_/V2_DATABASE_PASSWORD,
 * or MIGRATION_*) or `file:/path` (inside $MIGRATION_SECRETS_DIR on the worker).
 */
export interface DatabaseRef {
  /** postgres://user@host:port/db (no password). */
  url?: string;
  urlRef?: string;
  passwordRef?: string;
}

export interface MigrationOptions {
  runId: string;
  strategy: Strategy;
  /** Run preflight only and return the plan; change nothing. */
  dryRun?: boolean;
  v1: {
    /** v1 API base URL (health check; v1 users are proxied here during the cut-over). */
    apiUrl: string;
    /** The database v1 uses (v2 shares it, as the spec says): where the worker finds it (never a password). */
    database: DatabaseRef;
    /** Kubeconfig file for the v1 cluster, a path on the worker (in-cluster config when absent); never its content. */
    kubeconfig?: string;
    /** Namespaces holding v1 Session/Template CRDs (v1 used streamspace; older installs workspaces). */
    namespaces: string[];
    /** v1 Deployments as "namespace/name". */
    deployments: string[];
  };
  v2: {
    /** v2 gateway readiness URL (…/ready). */
    readyUrl: string;
    /** Database of the v2 control plane, where agents register (defaults to the v1 database). */
    database?: DatabaseRef;
    /** v2 Deployments scaled down on rollback, as "namespace/name". */
    deployments: string[];
    /** Platforms that must have an online agent before sessions move. */
    platforms: string[];
  };
  backupDir: string;
  cohorts: Cohort[];
  approval: {
    mode: 'manual' | 'auto';
    /** Auto mode: how long a cohort soaks before its health gates are checked. */
    soak: string;
    maxSessionFailureRate: number;
  };
  importBatchSize: number;
  /** Pause between import batches, to spare a busy v1 database. */
  importPaceMs: number;
  agentWaitTimeout: string;
  /** Durable wait before v1 is decommissioned (the spec's 1-2 weeks). */
  decommissionAfter: string;
}

export type PhaseStatus = 'pending' | 'running' | 'done' | 'failed' | 'skipped' | 'compensated';

export interface PhaseProgress {
  name: PhaseName;
  status: PhaseStatus;
  startedAt?: string;
  endedAt?: string;
  detail?: string;
}

export interface ImportFailure {
  kind: string;
  id: string;
  namespace: string | null;
  reason: string;
}

export interface ImportProgress {
  total: number;
  processed: number;
  imported: number;
  failed: number;
  /** Rows that were not imported, with the reason (first 1000; all are in migration_import_results). */
  failures: ImportFailure[];
  /** Delta imports of the cut-over: sessions v1 changed since the import, re-imported as their users moved. */
  delta?: { processed: number; reimported: number; adopted: number };
}

/** Totals of one import child run (carried across its continue-as-new). */
export interface ImportTotals {
  processed: number;
  imported: number;
  unchanged: number;
  failed: number;
  adopted: number;
  pages: number;
}

export type RunStatus =
  'running' | 'awaiting-approval' | 'blocked' | 'waiting-to-decommission' | 'rolling-back' | 'rolled-back' | 'completed' | 'aborted' | 'planned';

export interface MigrationProgress {
  runId: string;
  strategy: Strategy;
  status: RunStatus;
  phase: PhaseName | null;
  phases: PhaseProgress[];
  import: ImportProgress;
  cohort: string | null;
  awaitingApproval: string | null;
  blockedReason: string | null;
  decommissionAt: string | null;
  rollback: Array<{ step: string; status: 'done' | 'failed' | 'skipped'; detail?: string }>;
  plan: string[];
}

/** How a rollback brings the database back: undo v2's additive changes (default), or restore the dump (last resort). */
export interface RollbackOptions {
  database?: 'undo' | 'restore';
}

/** Approve the cohort (or phase) the run waits on. */
export const approveSignal = defineSignal<[string?]>('approve');
/** Retry the phase that blocked the run. */
export const retrySignal = defineSignal('retry');
/** Keep v1 (skip decommission) but finish the run. */
export const cancelDecommissionSignal = defineSignal('cancelDecommission');
/** Undo everything done so far, newest first. Returns once the rollback has been accepted. */
export const rollbackUpdate = defineUpdate<MigrationProgress, [string, RollbackOptions?]>('rollback');
/** From the import child to its parent run: totals so far (throttled). */
export const importProgressSignal = defineSignal<[ImportTotals & { failures: ImportFailure[]; delta: boolean }]>('importProgress');
/** Stop where it is, without compensation. */
export const abortSignal = defineSignal<[string?]>('abort');
export const progressQuery = defineQuery<MigrationProgress>('progress');

/**
 * Strips secrets from text that may reach a Temporal failure, progress, a log or a response:
 * `scheme://user:pass@` → `scheme://user:***@`, `password=…` (libpq keyword and URL query forms),
 * PGPASSWORD=…. Pure (safe in workflow code).
 */
export function redactSecrets(text: string): string {
  return text
    .replace(/([a-z][a-z0-9+.-]*:\/\/[^\s:/@'"]*):[^\s@'"]*@/gi, '$1:***@')
    .replace(/\b(password|passwd|pgpassword|sslpassword)(\s*[=:]\s*)('[^']*'|"[^"]*"|[^\s&;'",]+)/gi, '$1$2***');
}

/** redactSecrets over every string of a JSON-like value (progress, responses). */
export function redactDeep<T>(v: T): T {
  if (typeof v === 'string') return redactSecrets(v) as T;
  if (Array.isArray(v)) return v.map((x) => redactDeep(x)) as T;
  if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, redactDeep(x)])) as T;
  return v;
}
