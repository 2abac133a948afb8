/**
 * The Temporal SDK's workflow stack traces: off unless WORKER_STACK_TRACES=true.
 *
 * For its `__stack_trace` query (the Temporal UI's "Stack Trace" tab), the SDK installs a V8
 * promise hook in each workflow thread that captures and formats a stack trace for every promise
 * a workflow creates, whether anyone asks or not. On the dispatch bench that was 40 % of the
 * workflow thread's CPU and a quarter of the worker's, more again when an evicted workflow is
 * replayed. The SDK has no option for it; it does without stack traces where V8's promise hooks
 * are unavailable (Bun, old Node). So the worker starts the SDK's workflow threads on
 * workers/workflow-thread.ts, which makes them unavailable to it there (workers/no-promise-hook.ts)
 * before it loads the SDK's thread script, and nowhere else.
 *
 * What an operator gives up: that tab answers "Workflow stack traces are not enabled on this
 * worker". What a session workflow is doing is in its `status` query, memo and search attributes
 * (docs/TEMPORAL.md); WORKER_STACK_TRACES=true brings the tab back, for debugging a stuck workflow.
 */
import workerThreads from 'node:worker_threads';

/** Runs the SDK's thread script after workers/no-promise-hook.ts. */
const THREAD = require.resolve('./workflow-thread');
/** The SDK's workflow thread script (@temporalio/worker/lib/workflow/workflow-worker-thread.js). */
const SDK_THREAD = /[\\/]@temporalio[\\/]worker[\\/]lib[\\/]workflow[\\/]workflow-worker-thread\.js$/;

let installed = false;

/**
 * From now on, the SDK's workflow threads start without its promise hook. Call before
 * Worker.create; idempotent. Other threads are started as asked.
 */
export function withoutWorkflowStackTraces(): void {
  if (installed) return;
  installed = true;
  const Original = workerThreads.Worker;
  class WorkflowThread extends Original {
    constructor(filename: string | URL, options?: workerThreads.WorkerOptions) {
      const path = filename instanceof URL ? filename.pathname : filename;
      if (!SDK_THREAD.test(path)) super(filename, options);
      // The thread's execArgv stays as the SDK gives it (by default the process's).
      else super(THREAD, { ...options, argv: [...(options?.argv ?? []), path] });
    }
  }
  (workerThreads as { Worker: typeof Original }).Worker = WorkflowThread;
}
