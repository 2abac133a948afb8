/**
 * Removes what an agent still runs for a session whose own workflow has ended (terminated,
 * failed): reconciliation found it on the agent's registration. One stop_session with a
 * generation above every command the session had, so the agent cannot mistake it for stale.
 */
import { proxyActivities, proxyLocalActivities, workflowInfo } from '@temporalio/workflow';
import type { SessionActivities } from '../activities/session-activities';
import { CleanupInput, FailureType } from './session-api';

const db = proxyLocalActivities<SessionActivities>({
  startToCloseTimeout: '30s',
  retry: { initialInterval: '500ms', backoffCoefficient: 2, maximumInterval: '10s' },
});

const commands = proxyActivities<SessionActivities>({
  startToCloseTimeout: '10m',
  heartbeatTimeout: '15s',
  retry: { initialInterval: '1s', backoffCoefficient: 2, maximumInterval: '10s', maximumAttempts: 5, nonRetryableErrorTypes: [FailureType.CommandFailed] },
});

const CLEANUP_TIMEOUT_MS = 5 * 60_000;

export async function sessionCleanupWorkflow(input: CleanupInput): Promise<string> {
  const generation = await db.nextCommandGeneration(input.sessionId);
  if (generation === null) return `session ${input.sessionId} is unknown here; left alone`;
  await commands.dispatchCommand({
    sessionId: input.sessionId,
    agentDbId: input.agentDbId,
    commandType: 'stop_session',
    idempotencyKey: `cleanup:${input.sessionId}:${workflowInfo().runId}`,
    generation,
    deadline: Date.now() + CLEANUP_TIMEOUT_MS,
  });
  await db.noteSessionEvent({ sessionId: input.sessionId, platform: 'docker', event: 'repair', detail: 'remove_orphan' });
  return `removed from the agent (${input.reason})`;
}
