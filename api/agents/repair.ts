/**
 * Reconciliation, the hand-over half: each divergence an agent's report shows goes to the
 * workflow that owns the session (signal `observed`), which decides the repair. A session whose
 * workflow has ended (terminated, failed, unknown) cannot be signalled: what the agent still runs
 * for it is removed by a short cleanup workflow (`session-cleanup/<session>/<agent>`).
 */
import { Client, WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError } from '@temporalio/client';
import type { Logger } from '../../config/log';
import { CLEANUP_WORKFLOW_TYPE, cleanupWorkflowId, observedSignal, sessionWorkflowId } from '../../workflows/session-api';
import type { Divergence } from './reconcile';

export interface RepairDeps {
  temporal: Client;
  taskQueue: string;
  log: Logger;
}

/** At most this many Temporal calls at once per report (a big agent may report thousands). */
const PARALLEL = 16;

export function createRepairHandler(deps: RepairDeps) {
  const cleanup = async (agentDbId: string, d: Divergence) => {
    try {
      await deps.temporal.workflow.start(CLEANUP_WORKFLOW_TYPE, {
        workflowId: cleanupWorkflowId(d.sessionId, agentDbId),
        taskQueue: deps.taskQueue,
        args: [{ sessionId: d.sessionId, agentDbId, reason: `agent runs it, session is ${d.desired}` }],
      });
    } catch (err) {
      if (!(err instanceof WorkflowExecutionAlreadyStartedError)) throw err;
    }
  };
  const one = async (agentDbId: string, d: Divergence) => {
    if (d.kind === 'orphan') return cleanup(agentDbId, d);
    try {
      await deps.temporal.workflow.getHandle(sessionWorkflowId(d.sessionId)).signal(observedSignal, { agentDbId, observed: d.observed, kind: d.kind });
    } catch (err) {
      if (err instanceof WorkflowNotFoundError) {
        if (d.observed !== 'absent') await cleanup(agentDbId, d);
        return;
      }
      throw err;
    }
  };
  return async (agentDbId: string, agentId: string, divergences: Divergence[]): Promise<void> => {
    const queue = [...divergences];
    await Promise.all(
      Array.from({ length: Math.min(PARALLEL, queue.length) }, async () => {
        for (let d = queue.shift(); d; d = queue.shift()) {
          await one(agentDbId, d).catch((err) =>
            deps.log.warn('cannot hand a divergence to its workflow (the next registration retries)', {
              agent: agentId,
              session: d!.sessionId,
              error: (err as Error).message,
            }),
          );
        }
      }),
    );
  };
}
