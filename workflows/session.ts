/**
 * One long-lived workflow per session (`session/<id>`) owns its lifecycle. Stop, hibernate and
 * wake arrive as Updates and run one at a time, so concurrent requests are serialised and a
 * request never runs twice. Deterministic and thin: every side effect is an activity.
 *
 * Runbook:
 *   1. start: place on an agent (capacity reserved atomically), send start_session, record running.
 *   2. then wait for Updates (hibernate / wake / stop) and for reconciliation reports (`observed`).
 *   3. every command has a generation (commandSeq) and a deadline; when the workflow stops waiting
 *      (timeout, or a stop cancelling a start) it withdraws the command: the agent abandons and
 *      undoes it, and never runs it later.
 *   4. a stop always wins over a start or a wake: it cancels them, also before the first start ran.
 *   5. while running, durable timers: no keyboard/mouse input for `idle_timeout` → hibernate; running
 *      for `max_session_duration` → stop (both read from the session row when they fire, so input
 *      seen by the gateway meanwhile, or a changed limit, re-arms them instead).
 */
import {
  ActivityCancellationType,
  LocalActivityOptions,
  ApplicationFailure,
  CancellationScope,
  condition,
  continueAsNew,
  isCancellation,
  patched,
  proxyActivities,
  proxyLocalActivities,
  setHandler,
  upsertMemo,
  upsertSearchAttributes,
  workflowInfo,
  allHandlersFinished,
} from '@temporalio/workflow';
import type { DispatchResult, QuickInput, SessionActivities } from '../activities/session-activities';
import type { LifetimeActivities, SessionLifetime } from '../activities/session-lifetime';
import type { AuditActivities } from '../activities/audit';
import type { CommandType } from '../protocol/messages';
import {
  CarriedState,
  commandKey,
  FailureType,
  hibernateUpdate,
  lifetimeChangedSignal,
  ObservedReport,
  observedSignal,
  WITHDRAWN_BY_STOP,
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

// Audit entries of automatic actions (v1's audit_log); a failed write never fails the session.
const audit = proxyLocalActivities<AuditActivities>({ startToCloseTimeout: '10s', retry: { maximumAttempts: 3 } });

const lifetime = proxyLocalActivities<LifetimeActivities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '10s' },
});

// Placement retries while no agent is online; the start scope's timeout bounds it.
const PLACEMENT_OPTIONS = {
  startToCloseTimeout: '30s',
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 1.5,
    maximumInterval: '5s',
    nonRetryableErrorTypes: [FailureType.InvalidTemplate, FailureType.NoCapacity],
  },
} satisfies LocalActivityOptions;
const placement = proxyLocalActivities<SessionActivities>(PLACEMENT_OPTIONS);

// placeAndIssue (placement that also issues the start command): as placement, but a cancelled
// start waits until the activity has finished, so the withdrawal that follows cannot precede the
// command's insertion.
const issuing = proxyLocalActivities<SessionActivities>({
  ...PLACEMENT_OPTIONS,
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
});

// Commands wait on an agent: they heartbeat, so a dead worker is noticed in seconds and the
// command is picked up by another worker without being issued twice (stable idempotency key).
const commands = proxyActivities<SessionActivities>({
  startToCloseTimeout: '10m',
  heartbeatTimeout: '15s',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '10s', nonRetryableErrorTypes: [FailureType.CommandFailed] },
});

// A command's fast path (see activities quickCommand): it waits half a second by default (the
// worker's COMMAND_QUICK_WAIT); a retry after a worker or database fault waits again, idempotently.
const quick = proxyLocalActivities<SessionActivities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '10s' },
});

// How long hibernate/wake/stop may take before the Update fails with a reason.
const COMMAND_TIMEOUT_MS = 5 * 60_000;

/**
 * Every patch below, at once. A patch (patched(id)) keeps a history that earlier code recorded
 * replaying as it ran; the first time a workflow meets one it records a marker and upserts the
 * TemporalChangeVersion search attribute (two events and a visibility write). A session started by
 * this code has all of them, so it records this one instead of one per patch it meets (five in a
 * plain create → hibernate → wake → stop); a history without it (started by earlier code) still
 * asks for each patch by its own id (has()).
 *
 * Each generation adds to the one before: a session started by this code records ALL_PATCHES only,
 * one started by the code before records ALL_PATCHES_2026_11 (and replays without what came after
 * it), one started before that neither. What ALL_PATCHES adds to ALL_PATCHES_2026_11:
 *   - one-step commands: a wake's quota reservation and a stop's "terminating" are written by the
 *     local activity that issues the command (quickCommand's `first`), so hibernate, wake and stop
 *     are one local activity each (issue 14).
 * A change after this must add a generation (or call patched(id) itself), never widen one.
 */
const ALL_PATCHES = 'session-patches-2026-12';
const ALL_PATCHES_2026_11 = 'session-patches-2026-11';

export async function sessionWorkflow(input: SessionWorkflowInput): Promise<SessionStatus> {
  // First, before any other command (a replay of an earlier history sees them missing here).
  const oneStepCommands = patched(ALL_PATCHES);
  const current = oneStepCommands || patched(ALL_PATCHES_2026_11);
  const has = (patch: string): boolean => current || patched(patch);
  const carried: CarriedState = input.carried ?? { state: 'pending', agentDbId: null, agentId: null, commandSeq: input.firstCommandSeq ?? 0, runs: 0 };
  let state: SessionState = carried.state;
  let agentDbId = carried.agentDbId;
  let agentId = carried.agentId;
  let commandSeq = carried.commandSeq;
  // The agent may hold something for the session that only a stop_session removes.
  let onAgent = carried.onAgent ?? carried.agentDbId !== null;
  let transition: Transition = null;
  let progress: string | null = null;
  let lastError: string | null = null;
  // The error the memo shows, and the agent the StreamSpaceAgent search attribute shows (setState;
  // a continued run inherits its predecessor's search attributes).
  let memoError: string | null = null;
  // (A new session the gateway placed started with its agent shown: input.placedOn.)
  let agentShown: string | null = input.carried ? carried.agentId : (input.placedOn ?? null);
  // A fresh session's start runs first: an Update arriving with it (even in the first
  // activation) waits for the start to finish or be cancelled.
  let busy = !input.carried;
  // Scope of the operation a stop cancels (a start, a wake, a restart by reconciliation).
  let startScope: CancellationScope | null = null;
  let stopRequested = false;
  const observations: ObservedReport[] = [];

  // Idle and duration timers (runbook step 5): planned from the session row whenever the state or
  // the limits change, checked again against the row when they fire.
  let lifetimeDirty = true;
  let hibernatesAt: number | null = null;
  let stopsAt: number | null = null;
  let retryTimersAt: number | null = null;
  let lastAutomaticAction: string | null = null;
  // On the workflow's own clock (the timers' clock), not the database's.
  let runningSince: number | null = carried.runningSince ?? null;
  // The session's limits as the command that made it running read them (DispatchInput.then):
  // the next planTimers uses them instead of reading the row again. undefined: none.
  let lifetimeRead: SessionLifetime | null | undefined;

  const status = (): SessionStatus => ({
    sessionId: input.sessionId,
    state,
    transition,
    agentId,
    progress,
    lastError,
    runs: carried.runs,
    hibernatesAt,
    stopsAt,
    lastAutomaticAction,
  });

  /** Runs fn exclusively: lifecycle operations never interleave. */
  async function exclusive<T>(fn: () => Promise<T>): Promise<T> {
    // A loop, not one condition: the SDK unblocks every waiting condition in one pass, so two
    // waiters may both see !busy before either sets it.
    while (busy) await condition(() => !busy);
    busy = true;
    try {
      return await fn();
    } finally {
      busy = false;
    }
  }

  /** Runs fn in a scope a stop request cancels. */
  async function stoppable<T>(fn: () => Promise<T>, timeoutMs?: number): Promise<T> {
    if (stopRequested) throw ApplicationFailure.nonRetryable('cancelled by a stop request', FailureType.InvalidTransition);
    startScope = new CancellationScope({ cancellable: true, ...(timeoutMs ? { timeout: timeoutMs } : {}) });
    try {
      return await startScope.run(fn);
    } finally {
      startScope = null;
    }
  }

  /** `recorded`: the command's activity wrote this state already (DispatchInput.then). */
  async function setState(
    next: SessionState,
    extra: { platformMetadata?: Record<string, unknown>; error?: string; clearAgent?: boolean; recorded?: boolean } = {},
  ) {
    if (next === 'running' && (state !== 'running' || runningSince === null)) runningSince = Date.now();
    else if (next !== 'running') runningSince = null;
    state = next;
    lifetimeDirty = true;
    // The agent goes with the state when it changed (one upsert event, not two; histories without
    // ALL_PATCHES upserted it on its own right after placement).
    const showAgent = current && agentId !== null && agentId !== agentShown;
    const upserts = [
      ...(input.stateSearchAttribute !== false ? [{ key: SA.state, value: next }] : []),
      ...(showAgent ? [{ key: SA.agent, value: agentId! }] : []),
    ];
    if (upserts.length) upsertSearchAttributes(upserts);
    if (showAgent) agentShown = agentId;
    // The agent (and, with input.stateSearchAttribute, the state) are search attributes (the
    // Temporal UI shows and filters them); the memo adds the error, written when it changes. (Histories without ALL_PATCHES wrote the memo
    // on every change, with state and agent: one more event and visibility write each.)
    const error = extra.error ?? null;
    if (!current) upsertMemo({ state: next, agent: agentId, error });
    else if (error !== memoError) upsertMemo({ error });
    memoError = error;
    if (extra.recorded) return;
    await db.recordSessionState(stateRecord(next, extra));
  }

  /** The session's row as setState(next, extra) writes it. */
  function stateRecord(next: SessionState, extra: { platformMetadata?: Record<string, unknown>; error?: string; clearAgent?: boolean } = {}) {
    return {
      sessionId: input.sessionId,
      state: next,
      agentDbId,
      platformMetadata: extra.platformMetadata,
      error: extra.error ?? null,
      clearAgent: extra.clearAgent,
      platform: input.platform,
    };
  }

  /**
   * Sends one command and waits for its outcome until `deadline` (workflow time, ms). If the
   * wait ends without an outcome (timeout, or cancelled by a stop), the command is withdrawn: the
   * agent abandons it and undoes what it did. `abandoned` then says whether the agent may still
   * hold its effect (`completed`: it finished before the withdrawal).
   */
  async function runCommand(
    type: CommandType,
    label: Transition,
    deadline: number,
    pre?: { seq: number; issued: boolean },
    then?: { state: SessionState; lifetime?: boolean },
    first?: QuickInput['first'],
  ): Promise<DispatchResult> {
    if (!agentDbId) throw ApplicationFailure.nonRetryable('session has no agent', FailureType.CommandFailed);
    // `pre`: the sequence number was taken (and the command maybe issued) by placeAndIssue.
    const seq = pre ? pre.seq : ++commandSeq;
    const idempotencyKey = commandKey(input.sessionId, seq, type);
    transition = label;
    progress = `${type} sent to ${agentId}`;
    const args = {
      sessionId: input.sessionId,
      agentDbId: agentDbId!,
      commandType: type,
      idempotencyKey,
      generation: seq,
      deadline,
      ...(pre?.issued ? { preIssued: true } : {}),
      ...(then ? { then: { ...then, platform: input.platform } } : {}),
    };
    // Since 'quick-command': the command is issued, and its outcome awaited for a moment, in this
    // workflow task (local activity quickCommand); only a command the agent has not finished by
    // then takes the activity (dispatchCommand), which finds it issued and waits for it.
    const quickly = has('quick-command');
    try {
      return await CancellationScope.withTimeout(Math.max(1, deadline - Date.now()), async () => {
        // `first` (one-step commands, ALL_PATCHES): what quickCommand writes before issuing; only there.
        if (quickly) {
          const q = await quick.quickCommand(first ? { ...args, first } : args);
          if (q.done) return q.result;
          if (q.issued) args.preIssued = true;
        }
        return commands.dispatchCommand(args);
      });
    } catch (err) {
      if (abandoned(err)) {
        const reason = stopRequested ? WITHDRAWN_BY_STOP : `withdrawn: no outcome within ${Math.round((deadline - Date.now()) / 1000 + 0.5)}s`;
        const now = await CancellationScope.nonCancellable(() => db.withdrawCommand({ idempotencyKey, reason }));
        if (now === 'completed') onAgent = true;
        // The command completed as the wait ended: its activity may have written `then.state`;
        // the row says what this workflow holds instead (the caller goes on from there).
        if (now === 'completed' && then)
          await CancellationScope.nonCancellable(() =>
            db.recordSessionState({ sessionId: input.sessionId, state, agentDbId, error: lastError, platform: input.platform }),
          );
      }
      throw err;
    } finally {
      transition = null;
      progress = null;
    }
  }

  /** Places the session on an agent and creates it there; `label`/`interim` say why (a first start, or waking an imported session). */
  async function start(label: Transition = 'starting', interim: SessionState = 'pending', deadline = Date.now() + input.startTimeoutMs) {
    transition = label;
    progress = 'placing session on an agent';
    // Since 'start-issues-command': placement, the interim state and the start_session command in
    // one local activity (one transaction), so the agent has the command before this workflow task
    // ends; dispatchCommand then only waits for the outcome. Before: placeSession, then
    // recordSessionState, then the command issued by dispatchCommand after the workflow task.
    let pre: { seq: number; issued: boolean } | undefined;
    if (has('start-issues-command')) {
      const seq = ++commandSeq;
      const idempotencyKey = commandKey(input.sessionId, seq, 'start_session');
      try {
        const placed = await issuing.placeAndIssue({
          sessionId: input.sessionId,
          platform: input.platform,
          interim,
          command: { idempotencyKey, generation: seq, deadline },
        });
        agentDbId = placed.agentDbId;
        agentId = placed.agentId;
        pre = { seq, issued: placed.issued };
      } catch (err) {
        // Cancelled (a stop, the start's timeout) while placing: the activity may still have
        // issued the command; withdraw it (the agent abandons and undoes it). Idempotent.
        if (isCancellation(err)) {
          const reason = stopRequested ? WITHDRAWN_BY_STOP : 'withdrawn: the start timed out while placing the session';
          if (has('cancelled-start-finds-agent')) {
            // The agent may have run it already (it completed or failed before the withdrawal):
            // then the stop or cleanup that follows removes what it made there.
            const issued = await CancellationScope.nonCancellable(() => db.abandonIssuedStart({ idempotencyKey, reason }));
            if (issued.onAgent) {
              ({ agentDbId, agentId } = issued.onAgent);
              onAgent = true;
            }
          } else await CancellationScope.nonCancellable(() => db.withdrawCommand({ idempotencyKey, reason }));
        }
        throw err;
      }
      if (!current) upsertSearchAttributes([{ key: SA.agent, value: agentId }]);
    } else {
      const placed = await placement.placeSession({ sessionId: input.sessionId, platform: input.platform });
      agentDbId = placed.agentDbId;
      agentId = placed.agentId;
      upsertSearchAttributes([{ key: SA.agent, value: placed.agentId }]);
      await db.recordSessionState({ sessionId: input.sessionId, state: interim, agentDbId, error: null });
    }
    try {
      // Since 'command-records-state' the dispatch activity writes running and reads the limits for the timers.
      const then = has('command-records-state') ? { state: 'running' as const, lifetime: true } : undefined;
      const result = await runCommand('start_session', label, deadline, pre, then);
      onAgent = true;
      if (result.recorded) lifetimeRead = result.recorded.lifetime;
      await setState('running', { platformMetadata: { ...(result.platform_metadata ?? {}), vnc: result.vnc ?? null }, recorded: !!result.recorded });
    } catch (err) {
      // An agent's own failure may leave a half-made container; a withdrawn start is undone by the agent.
      if (!abandoned(err)) onAgent = true;
      throw err;
    }
  }

  async function stop(): Promise<SessionStatus> {
    if (state === 'terminated') return status();
    const previous = state;
    let recorded = false;
    // One-step commands (ALL_PATCHES): the stop command's local activity records "terminating" before it issues.
    const command = !!agentDbId && onAgent;
    const oneStep = command && oneStepCommands;
    await setState('terminating', { recorded: oneStep });
    try {
      if (command) {
        const then = has('command-records-state') && !lastError ? { state: 'terminated' as const } : undefined;
        const first = oneStep ? { record: stateRecord('terminating') } : undefined;
        recorded = !!(await runCommand('stop_session', 'stopping', Date.now() + COMMAND_TIMEOUT_MS, undefined, then, first)).recorded;
      }
    } catch (err) {
      // The session stays visible as terminating-with-error rather than silently "terminated".
      lastError = `stop failed: ${errorMessage(err)}`;
      await setState(previous === 'failed' ? 'failed' : previous, { error: lastError });
      throw ApplicationFailure.create({ message: lastError, type: FailureType.CommandFailed, nonRetryable: true });
    }
    onAgent = false;
    await setState('terminated', lastError ? { error: lastError } : { recorded });
    return status();
  }

  async function fail(reason: string, cls: string) {
    lastError = reason;
    await setState('failed', { error: reason });
    await db.noteSessionEvent({ sessionId: input.sessionId, platform: input.platform, event: 'failed', detail: cls });
  }

  async function hibernateNow() {
    transition = 'hibernating';
    // Since 'command-records-state' the dispatch activity writes the new state (no local activity after it).
    const then = has('command-records-state') ? { state: 'hibernated' as const } : undefined;
    const result = await runCommand('hibernate_session', 'hibernating', Date.now() + COMMAND_TIMEOUT_MS, undefined, then);
    await setState('hibernated', { recorded: !!result.recorded });
  }

  /** Reads the limits and the last input from the row; sets hibernatesAt / stopsAt (null when not running). */
  async function planTimers(): Promise<SessionLifetime | null> {
    lifetimeDirty = false;
    hibernatesAt = null;
    stopsAt = null;
    const read = lifetimeRead;
    lifetimeRead = undefined;
    if (state !== 'running') return null;
    const l = read !== undefined ? read : await lifetime.sessionLifetime(input.sessionId);
    if (!l) return null;
    // A limit v1 wrote that is not a duration is reported, and that timer stays off.
    if (l.invalid) lastAutomaticAction = `not acted on: ${l.invalid}`;
    const since = runningSince ?? l.runningSince ?? Date.now();
    if (l.maxDurationMs > 0) stopsAt = since + l.maxDurationMs;
    if (l.idleTimeoutMs > 0) hibernatesAt = Math.max(l.lastInputAt ?? 0, since) + l.idleTimeoutMs;
    return l;
  }

  /** A timer fired: hibernate an idle session, stop one past its maximum duration (after a fresh look at the row). */
  async function onTimer() {
    retryTimersAt = null;
    const l = await planTimers();
    if (!l) return;
    const now = Date.now();
    const minutes = (ms: number) => `${Math.round(ms / 60_000)} min`;
    let action: 'stop' | 'hibernate' | null = null;
    if (stopsAt !== null && now >= stopsAt) action = 'stop';
    else if (hibernatesAt !== null && now >= hibernatesAt) action = 'hibernate';
    if (!action) return;
    const why =
      action === 'stop'
        ? `it ran for its maximum session duration (${minutes(l.maxDurationMs)})`
        : `no keyboard or mouse input for ${minutes(l.idleTimeoutMs)}`;
    try {
      if (action === 'stop') await stop();
      else await hibernateNow();
    } catch (err) {
      // The agent did not answer (offline?): the session stays as it is; try again in a minute.
      lastAutomaticAction = `could not ${action} (${why}): ${errorMessage(err)}; retrying in 1 min`;
      retryTimersAt = Date.now() + 60_000;
      return;
    }
    lastAutomaticAction = `${action === 'stop' ? 'stopped' : 'hibernated'}: ${why}`;
    await audit.recordAudit({
      action: action === 'stop' ? 'session.max_duration_stop' : 'session.idle_hibernate',
      resource_type: 'session',
      resource_id: input.sessionId,
      metadata:
        action === 'stop'
          ? { max_session_duration_ms: l.maxDurationMs, user: input.user }
          : { idle_timeout_ms: l.idleTimeoutMs, last_input_at: l.lastInputAt, user: input.user },
    });
  }

  /** Reconciliation: what the agent really has differs from this session's state; repair it. */
  async function repair(o: ObservedReport) {
    if (o.agentDbId !== agentDbId || stopRequested) return;
    const note = (action: string) => db.noteSessionEvent({ sessionId: input.sessionId, platform: input.platform, event: 'repair', detail: action });
    if (state === 'running' && (o.observed === 'absent' || o.observed === 'failed')) {
      await note('restart');
      try {
        await stoppable(() => start('starting', 'running'), input.startTimeoutMs);
      } catch (err) {
        if (stopRequested && abandoned(err)) return;
        await fail(
          `the session's container ${o.observed === 'absent' ? 'vanished' : 'failed'} on agent ${agentId} and could not be restarted: ${errorMessage(err)}`,
          'reconcile',
        );
      }
    } else if (state === 'running' && o.observed === 'hibernated') {
      await note('wake_again');
      const result = await stoppable(() => runCommand('wake_session', 'waking', Date.now() + COMMAND_TIMEOUT_MS)).catch(() => null);
      if (result) await setState('running', { platformMetadata: { ...(result.platform_metadata ?? {}), vnc: result.vnc ?? null } });
    } else if (state === 'hibernated' && (o.observed === 'running' || o.observed === 'starting')) {
      await note('hibernate_again');
      await runCommand('hibernate_session', 'hibernating', Date.now() + COMMAND_TIMEOUT_MS).catch(() => undefined);
    } else if (state === 'hibernated' && o.observed === 'absent') {
      // Nothing left on the agent: the next wake places and creates the session anew (home volume kept).
      await note('forget_placement');
      agentDbId = null;
      agentId = null;
      onAgent = false;
      await setState('hibernated', { clearAgent: true });
    }
  }

  setHandler(statusQuery, status);

  setHandler(observedSignal, (o) => {
    observations.push(o);
  });

  setHandler(lifetimeChangedSignal, () => {
    lifetimeDirty = true;
    lifetimeRead = undefined;
  });

  setHandler(
    hibernateUpdate,
    () =>
      exclusive(async () => {
        if (state === 'hibernated') return status();
        if (state !== 'running') throw invalid('hibernate', state);
        await hibernateNow();
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
        // Quota (activities/quota.ts): refused if waking would exceed the owner's user_quotas;
        // otherwise the session's share is reserved until the wake's outcome is recorded. With
        // one-step commands (ALL_PATCHES), a placed session's wake command reserves it in its own local activity.
        const reserveWithCommand = oneStepCommands && agentDbId !== null;
        if (has('quota-on-wake') && !reserveWithCommand) {
          try {
            await db.reserveForWake({ sessionId: input.sessionId });
          } catch (err) {
            if (!hasFailureType(err, FailureType.QuotaExceeded)) throw err;
            throw ApplicationFailure.create({ message: errorMessage(err), type: FailureType.QuotaExceeded, nonRetryable: true });
          }
        }
        transition = 'waking';
        // An imported v1 session (or one whose container vanished while hibernated) is not on any
        // agent: waking it places and creates it (with its home volume). A failed attempt leaves
        // it hibernated and unplaced.
        if (!agentDbId) {
          try {
            await stoppable(() => start('waking', 'hibernated'), input.startTimeoutMs);
          } catch (err) {
            lastError = `wake failed: ${stopRequested && abandoned(err) ? 'cancelled by a stop request' : errorMessage(err)}`;
            if (agentDbId && onAgent && !stopRequested) await runCommand('stop_session', 'waking', Date.now() + COMMAND_TIMEOUT_MS).catch(() => undefined);
            if (!stopRequested || !onAgent) {
              agentDbId = null;
              agentId = null;
              onAgent = false;
            }
            await setState('hibernated', { error: lastError, clearAgent: !agentDbId });
            throw ApplicationFailure.create({ message: lastError, type: FailureType.CommandFailed, nonRetryable: true });
          }
          return status();
        }
        try {
          // Since 'command-records-state' the dispatch activity writes running and reads the limits for the timers.
          const then = has('command-records-state') ? { state: 'running' as const, lifetime: true } : undefined;
          const first = reserveWithCommand ? { reserveForWake: true } : undefined;
          const result = await stoppable(() => runCommand('wake_session', 'waking', Date.now() + COMMAND_TIMEOUT_MS, undefined, then, first));
          if (result.recorded) lifetimeRead = result.recorded.lifetime;
          await setState('running', { platformMetadata: { ...(result.platform_metadata ?? {}), vnc: result.vnc ?? null }, recorded: !!result.recorded });
        } catch (err) {
          // Refused by the quota before anything was issued: the session stays hibernated, as when the reservation ran alone.
          if (reserveWithCommand && hasFailureType(err, FailureType.QuotaExceeded))
            throw ApplicationFailure.create({ message: errorMessage(err), type: FailureType.QuotaExceeded, nonRetryable: true });
          lastError = `wake failed: ${stopRequested && abandoned(err) ? 'cancelled by a stop request' : errorMessage(err)}`;
          throw ApplicationFailure.create({ message: lastError, type: FailureType.CommandFailed, nonRetryable: true });
        }
        return status();
      }),
    { validator: () => rejectIf(stopRequested || state === 'terminated' || state === 'failed', 'wake', state) },
  );

  setHandler(stopUpdate, async () => {
    stopRequested = true;
    // A stop cancels a start or wake in progress (the user's way out of a stuck start); one that
    // arrives before the start began (first activation) means the start never runs.
    startScope?.cancel();
    return exclusive(stop);
  });

  if (!input.carried) {
    // (The gateway starts the workflow with this memo already: histories without ALL_PATCHES wrote it again.)
    if (!current) upsertMemo({ sessionId: input.sessionId, user: input.user, template: input.template, platform: input.platform, state });
    try {
      await stoppable(() => start(), input.startTimeoutMs);
    } catch (err) {
      if (stopRequested || hasFailureType(err, FailureType.CommandWithdrawnByStop)) {
        // (A replay whose stop Update the server dropped with a failed workflow task still sees
        // that a stop withdrew the start: it stops; the Update, sent again, finds it terminated.)
        stopRequested = true;
        lastError = 'start cancelled by a stop request';
        // The stop came before the start ran (its first activation): the gateway may have issued
        // the start with the session. Withdraw it; if the agent acted on it already, the stop
        // below removes what it made (its generation follows the start's).
        if (!agentDbId && commandSeq === (input.firstCommandSeq ?? 0) && has('stop-withdraws-issued-start')) {
          const idempotencyKey = commandKey(input.sessionId, commandSeq + 1, 'start_session');
          const issued = await CancellationScope.nonCancellable(() => db.abandonIssuedStart({ idempotencyKey, reason: WITHDRAWN_BY_STOP }));
          if (issued.issued) commandSeq++;
          if (issued.onAgent) {
            ({ agentDbId, agentId } = issued.onAgent);
            onAgent = true;
          }
        }
        await stop().catch(() => undefined);
      } else if (abandoned(err)) {
        // The start command was withdrawn: the agent abandons and undoes it (and reconciliation
        // removes anything an agent that was away still has).
        const timedOut = `start timed out after ${Math.round(input.startTimeoutMs / 1000)}s (${progress ?? 'no progress'})`;
        await cleanupAfterFailedStart(timedOut, 'start_timeout');
      } else {
        await cleanupAfterFailedStart(`start failed: ${errorMessage(err)}`, failureClass(err));
      }
    } finally {
      transition = null;
      progress = null;
      busy = false;
    }
  }

  /** Removes whatever a failed start left on the agent, then records the failure. */
  async function cleanupAfterFailedStart(reason: string, cls: string) {
    if (agentDbId && onAgent) {
      try {
        await runCommand('stop_session', 'stopping', Date.now() + COMMAND_TIMEOUT_MS);
        onAgent = false;
      } catch (cleanupErr) {
        reason += `; cleanup failed: ${errorMessage(cleanupErr)}`;
      }
    }
    await fail(reason, cls);
  }

  const maxEvents = input.maxHistoryEvents ?? 2000;
  const done = () => state === 'terminated' || (state === 'failed' && !stopRequested);
  const historyFull = () => workflowInfo().continueAsNewSuggested || workflowInfo().historyLength > maxEvents;
  // Histories recorded before the timers existed replay without them.
  const timed = has('session-lifetime-timers');
  for (;;) {
    if (timed && lifetimeDirty && !busy && !done()) await exclusive(planTimers);
    // (Read through a function: TypeScript cannot see the handlers and activities change them.)
    const deadlines = (): number[] => [hibernatesAt, stopsAt].filter((t): t is number => t !== null);
    const due: number | null = retryTimersAt ?? (deadlines().length ? Math.min(...deadlines()) : null);
    const ready = () => done() || (!busy && ((timed && lifetimeDirty) || observations.length > 0 || historyFull()));
    // true: something to do; false: the timer fired. (condition() without a timeout resolves to
    // undefined: never read that as "timed out", or an observation would spin this loop forever.)
    let woken = true;
    if (timed && due !== null) woken = await condition(ready, Math.max(1, due - Date.now()));
    else await condition(ready);
    if (done()) break;
    if (!woken) {
      // A timer fired: act once nothing else runs (a user's request in progress goes first).
      await exclusive(onTimer);
      continue;
    }
    if (timed && lifetimeDirty) continue;
    if (!observations.length) break; // history full: continue as new
    const o = observations.shift()!;
    await exclusive(() => repair(o));
  }
  await condition(allHandlersFinished);
  if (done()) return status();
  return continueAsNew<typeof sessionWorkflow>({
    ...input,
    carried: { state, agentDbId, agentId, commandSeq, runs: carried.runs + 1, onAgent, runningSince },
  });
}

/** The wait for a command ended without the agent's outcome: cancelled, timed out, or the command withdrawn/expired. */
function abandoned(err: unknown): boolean {
  return isCancellation(err) || hasFailureType(err, FailureType.CommandWithdrawn) || hasFailureType(err, FailureType.CommandWithdrawnByStop);
}

function hasFailureType(err: unknown, type: string): boolean {
  for (let e: unknown = err; e && typeof e === 'object'; e = (e as { cause?: unknown }).cause) {
    if (e instanceof ApplicationFailure && e.type === type) return true;
  }
  return false;
}

function failureClass(err: unknown): string {
  let e: unknown = err;
  while (e && typeof e === 'object') {
    if (e instanceof ApplicationFailure && e.type)
      return e.type === FailureType.NoCapacity ? 'no_capacity' : e.type === FailureType.InvalidTemplate ? 'invalid_template' : 'start_failed';
    e = (e as { cause?: unknown }).cause;
  }
  return 'start_failed';
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
