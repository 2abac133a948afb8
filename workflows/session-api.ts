/**
 * The session workflow's public surface: input, status, queries and updates. Imported by the
 * workflow itself (bundled for the worker) and by the gateway's Temporal client, so both agree.
 * Only @temporalio/workflow definitions and plain types here: no Node APIs.
 */
import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { CommandType, Platform } from '../protocol/messages';

export type SessionState = 'pending' | 'running' | 'hibernated' | 'terminating' | 'terminated' | 'failed';
export type Transition = 'starting' | 'hibernating' | 'waking' | 'stopping' | null;

export const SESSION_WORKFLOW_TYPE = 'sessionWorkflow';
export const sessionWorkflowId = (sessionId: string): string => `session/${sessionId}`;
/**
 * A session command's idempotency key: one command per session, generation and type. The workflow
 * numbers its commands from firstCommandSeq + 1; the gateway issues a new session's first one
 * (generation 1) with the session, and the workflow then finds it under this key.
 */
export const commandKey = (sessionId: string, generation: number, type: CommandType): string => `${sessionId}:${generation}:${type}`;

export interface SessionWorkflowInput {
  sessionId: string;
  user: string;
  template: string;
  platform: Platform;
  /** A start that has not reached running by then fails with a clear reason. */
  startTimeoutMs: number;
  /** Continue-as-new once history passes this many events (Temporal's own suggestion also counts). */
  maxHistoryEvents?: number;
  /** Carried across continue-as-new; absent on the first run. */
  carried?: CarriedState;
  /**
   * Commands the session already had (a failed session started again by a retry): numbering goes
   * on from there, so idempotency keys and generations never repeat an earlier run's. Absent: 0.
   */
  firstCommandSeq?: number;
  /**
   * false: the state is not kept in the StreamSpaceState search attribute (one upsert event and
   * visibility write fewer per operation). Absent: it is (histories recorded before this existed).
   */
  stateSearchAttribute?: boolean;
  /**
   * The agent (agent_id) the gateway placed the new session on, and started this workflow with as
   * its StreamSpaceAgent search attribute: the workflow upserts the attribute only if its own
   * placement says otherwise. Absent: not placed yet.
   */
  placedOn?: string;
}

export interface CarriedState {
  state: SessionState;
  agentDbId: string | null;
  agentId: string | null;
  /** Sequence of commands issued so far; makes each command's idempotency key unique and stable. */
  commandSeq: number;
  runs: number;
  /** The agent may hold compute or a container for the session (only a stop_session removes it). Absent: agentDbId !== null. */
  onAgent?: boolean;
  /** Workflow time the session last became running (the idle and duration clocks); absent: unknown. */
  runningSince?: number | null;
}

export interface SessionStatus {
  sessionId: string;
  state: SessionState;
  transition: Transition;
  agentId: string | null;
  progress: string | null;
  lastError: string | null;
  /** How many times this session's workflow has continued as new. */
  runs: number;
  /** When the session hibernates without keyboard/mouse input (epoch ms); null: not running or no idle timeout. */
  hibernatesAt?: number | null;
  /** When the maximum session duration stops it (epoch ms); null: no limit or not running. */
  stopsAt?: number | null;
  /** The last thing the workflow did on its own (idle hibernation, duration stop), and why. */
  lastAutomaticAction?: string | null;
}

export const statusQuery = defineQuery<SessionStatus>('status');
export const hibernateUpdate = defineUpdate<SessionStatus>('hibernate');
export const wakeUpdate = defineUpdate<SessionStatus>('wake');
export const stopUpdate = defineUpdate<SessionStatus>('stop');

/** What an agent's registration showed that differs from the session's state (api/agents/reconcile.ts). */
export interface ObservedReport {
  agentDbId: string;
  observed: 'starting' | 'running' | 'hibernated' | 'failed' | 'absent';
  kind: 'orphan' | 'missing' | 'state_mismatch';
}
/** Reconciliation hands a divergence to the session's workflow, which decides the repair. */
/** The session's idle timeout or maximum duration changed (PATCH /sessions/:id): re-plan the timers. */
export const lifetimeChangedSignal = defineSignal('lifetimeChanged');
export const observedSignal = defineSignal<[ObservedReport]>('observed');

/** Removes what an agent still runs for a session whose workflow has ended. */
export const CLEANUP_WORKFLOW_TYPE = 'sessionCleanupWorkflow';
export const cleanupWorkflowId = (sessionId: string, agentDbId: string): string => `session-cleanup/${sessionId}/${agentDbId}`;
export interface CleanupInput {
  sessionId: string;
  agentDbId: string;
  reason: string;
}

/** The withdrawal reason of a command a stop request cancelled. */
export const WITHDRAWN_BY_STOP = 'withdrawn: cancelled by a stop request';

/** Failure types the gateway maps to HTTP statuses. */
export const FailureType = {
  InvalidTransition: 'InvalidTransition',
  NoAgentAvailable: 'NoAgentAvailable',
  CommandFailed: 'CommandFailed',
  InvalidTemplate: 'InvalidTemplate',
  StartTimedOut: 'StartTimedOut',
  NoCapacity: 'NoCapacity',
  /** The command was withdrawn (its workflow gave up on it, or its deadline passed): the agent undoes it. */
  CommandWithdrawn: 'CommandWithdrawn',
  /** Withdrawn because a stop cancelled it (also seen by a replay that lost the stop Update). */
  CommandWithdrawnByStop: 'CommandWithdrawnByStop',
  /** A wake would exceed the owner's user_quotas (activities/quota.ts); the gateway answers 403. */
  QuotaExceeded: 'QuotaExceeded',
} as const;
