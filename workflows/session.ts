/**
 * One long-lived workflow per session (`session/<id>`) owns its lifecycle. Stop, hibernate and
 * wake arrive as Updates and run one at a time, so concurrent requests are serialised and a
 * request never runs twice. Deterministic and thin: every side effect is an activity.
 */
import {
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  isCancellation,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
} from '@temporalio/workflow';
import type { SessionActivities } from '../activities/session-activities';
import type { CommandType } from '../protocol/messages';
import {
  CarriedState,
  FailureType,
  hibernateUpdate,
  SessionState,
  SessionStatus,
  SessionWorkflowInput,
  statusQuery,
  stopUpdate,
  Transition,
  wakeUpdate,
} from './session-api';
import { SA } from './search-attributes';

// Bookkeeping is a few milliseconds of SQL: local activities, so it adds no task-queue round
// trips to a start; safe to retry forever (the database may restart).
const db = proxyLocalActivities<SessionActivities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '10s' },
});

// Placement retries while no agent is online; the start scope's timeout bounds it.
const placement = proxyLocalActivities<SessionActivities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '1s', backoffCoefficient: 1.5, maximumInterval: '5s', nonRetryableErrorTypes: [FailureType.InvalidTemplate] },
});

// Commands wait on an agent: they heartbeat, so a dead worker is noticed in seconds and the
// command is picked up by another worker without being issued twice (stable idempotency key).
const commands = proxyActivities<SessionActivities>({
  startToCloseTimeout: '10m',
  heartbeatTimeout: '15s',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '10s', nonRetryableErrorTypes: [FailureType.CommandFailed] },
});

// How long hibernate/wake/stop may take before the Update fails with a reason.
const COMMAND_TIMEOUT_MS = 5 * 60_000;

export async function sessionWorkflow(input: SessionWorkflowInput): Promise<SessionStatus> {
  const carried: CarriedState = input.carried ?? { state: 'pending', agentDbId: null, agentId: null, commandSeq: 0, runs: 0 };
  let state: SessionState = carried.state;
  let agentDbId = carried.agentDbId;
  let agentId = carried.agentId;
  let commandSeq = carried.commandSeq;
  let transition: Transition = null;
  let progress: string | null = null;
  let lastError: string | null = null;
  let busy = false;
  let startScope: CancellationScope | null = null;
  let stopRequested = false;

  const status = (): SessionStatus => ({
    sessionId: input.sessionId,
    state,
    transition,
    agentId,
    progress,
    lastError,
    runs: carried.runs,
  });

  /** Runs fn exclusively: lifecycle operations never interleave. */
  async function exclusive<T>(fn: () => Promise<T>): Promise<T> {
    await condition(() => !busy);
    busy = true;
    try {
      return await fn();
    } finally {
      busy = false;
    }
  }

  async function setState(next: SessionState, extra: { platformMetadata?: Record<string, unknown>; error?: string } = {}) {
    state = next;
    upsertSearchAttributes([{ key: SA.state, value: next }]);
    upsertMemo({ state: next, agent: agentId, error: extra.error ?? null });
    await db.recordSessionState({
      sessionId: input.sessionId,
      state: next,
      agentDbId,
      platformMetadata: extra.platformMetadata,
      error: extra.error ?? null,
    });
  }

  async function runCommand(type: CommandType, label: Transition, timeoutMs: number) {
    if (!agentDbId) throw ApplicationFailure.nonRetryable('session has no agent', FailureType.CommandFailed);
    const seq = ++commandSeq;
    transition = label;
    progress = `${type} sent to ${agentId}`;
    try {
      return await CancellationScope.withTimeout(timeoutMs, () =>
        commands.dispatchCommand({
          sessionId: input.sessionId,
          agentDbId: agentDbId!,
          commandType: type,
          idempotencyKey: `${input.sessionId}:${seq}:${type}`,
        }),
      );
    } finally {
      transition = null;
      progress = null;
    }
  }

  /** Places the session on an agent and creates it there; `label`/`interim` say why (a first start, or waking an imported session). */
  async function start(label: Transition = 'starting', interim: SessionState = 'pending') {
    transition = label;
    progress = 'placing session on an agent';
    const placed = await placement.placeSession({ sessionId: input.sessionId, platform: input.platform });
    agentDbId = placed.agentDbId;
    agentId = placed.agentId;
    upsertSearchAttributes([{ key: SA.agent, value: placed.agentId }]);
    await db.recordSessionState({ sessionId: input.sessionId, state: interim, agentDbId, error: null });
    const result = await runCommand('start_session', label, input.startTimeoutMs);
    await setState('running', { platformMetadata: { ...(result.platform_metadata ?? {}), vnc: result.vnc ?? null } });
  }

  async function stop(): Promise<SessionStatus> {
    if (state === 'terminated') return status();
    const previous = state;
    await setState('terminating');
    try {
      if (agentDbId) await runCommand('stop_session', 'stopping', COMMAND_TIMEOUT_MS);
    } catch (err) {
      // The session stays visible as terminating-with-error rather than silently "terminated".
      lastError = `stop failed: ${errorMessage(err)}`;
      await setState(previous === 'failed' ? 'failed' : previous, { error: lastError });
      throw ApplicationFailure.create({ message: lastError, type: FailureType.CommandFailed, nonRetryable: true });
    }
    await setState('terminated');
    return status();
  }

  setHandler(statusQuery, status);

  setHandler(
    hibernateUpdate,
    () =>
      exclusive(async () => {
        if (state === 'hibernated') return status();
        if (state !== 'running') throw invalid('hibernate', state);
        await runCommand('hibernate_session', 'hibernating', COMMAND_TIMEOUT_MS);
        await setState('hibernated');
        return status();
      }),
    { validator: () => rejectIf(stopRequested || state === 'terminated' || state === 'failed', 'hibernate', state) },
  );

  setHandler(
    wakeUpdate,
    () =>
      exclusive(async () => {
        if (state === 'running') return status();
        if (state !== 'hibernated') throw invalid('wake', state);
        // An imported v1 session has never run on v2: waking it places and creates it (with the
        // home volume v1 gave it). A failed attempt leaves it hibernated and unplaced.
        if (!agentDbId) {
          try {
            await start('waking', 'hibernated');
          } catch (err) {
            lastError = `wake failed: ${errorMessage(err)}`;
            if (agentDbId) await runCommand('stop_session', 'waking', COMMAND_TIMEOUT_MS).catch(() => undefined);
            agentDbId = null;
            agentId = null;
            await setState('hibernated', { error: lastError });
            throw ApplicationFailure.create({ message: lastError, type: FailureType.CommandFailed, nonRetryable: true });
          }
          return status();
        }
        const result = await runCommand('wake_session', 'waking', COMMAND_TIMEOUT_MS);
        await setState('running', { platformMetadata: { ...(result.platform_metadata ?? {}), vnc: result.vnc ?? null } });
        return status();
      }),
    { validator: () => rejectIf(stopRequested || state === 'terminated' || state === 'failed', 'wake', state) },
  );

  setHandler(stopUpdate, async () => {
    stopRequested = true;
    // A stop during start cancels the start (the user's way out of a stuck start).
    if (startScope && state === 'pending') startScope.cancel();
    return exclusive(stop);
  });

  if (!input.carried) {
    upsertMemo({ sessionId: input.sessionId, user: input.user, template: input.template, platform: input.platform, state });
    busy = true;
    try {
      startScope = new CancellationScope({ cancellable: true, timeout: input.startTimeoutMs });
      await startScope.run(start);
    } catch (err) {
      if (stopRequested && isCancellation(err)) {
        lastError = 'start cancelled by a stop request';
      } else {
        lastError = isCancellation(err)
          ? `start timed out after ${Math.round(input.startTimeoutMs / 1000)}s (${progress ?? 'no progress'})`
          : `start failed: ${errorMessage(err)}`;
        // Clean up whatever the agent may have created, then report the failure.
        if (agentDbId) {
          try {
            await runCommand('stop_session', 'stopping', COMMAND_TIMEOUT_MS);
          } catch (cleanupErr) {
            lastError += `; cleanup failed: ${errorMessage(cleanupErr)}`;
          }
        }
        await setState('failed', { error: lastError });
      }
    } finally {
      startScope = null;
      transition = null;
      progress = null;
      busy = false;
    }
  }

  const maxEvents = input.maxHistoryEvents ?? 2000;
  const done = () => state === 'terminated' || (state === 'failed' && !stopRequested);
  await condition(() => done() || (!busy && (workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > maxEvents)));
  await condition(allHandlersFinished);
  if (done()) return status();
  return continueAsNew<typeof sessionWorkflow>({
    ...input,
    carried: { state, agentDbId, agentId, commandSeq, runs: carried.runs + 1 },
  });
}

function invalid(op: string, state: SessionState): ApplicationFailure {
  return ApplicationFailure.create({
    message: `cannot ${op} a session that is ${state}`,
    type: FailureType.InvalidTransition,
    nonRetryable: true,
  });
}

function rejectIf(cond: boolean, op: string, state: SessionState): void {
  if (cond) throw invalid(op, state);
}

function errorMessage(err: unknown): string {
  let e: unknown = err;
  // Surface the innermost cause: an activity failure wraps the agent's own reason.
  while (e && typeof e === 'object' && 'cause' in e && (e as { cause?: unknown }).cause) e = (e as { cause: unknown }).cause;
  return e instanceof Error ? e.message : String(e);
}
