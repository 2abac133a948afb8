/**
 * Loaded first in the Temporal SDK's workflow threads only (workers/workflow-thread.ts, started by workers/workflow-stack-traces.ts):
 * the SDK's own call for a V8 promise hook (from its workflow/vm-shared.js) fails there, so it runs
 * workflows without capturing a stack trace per promise. It says so once per thread:
 * "v8.promiseHooks.createHook is not available; stack trace collection will be disabled."
 * Every other caller is served as usual (Node's async_hooks, behind AsyncLocalStorage, asks the
 * same function for its hooks).
 */
import v8 from 'node:v8';
import { isMainThread } from 'node:worker_threads';

/** The SDK's GlobalHandlers.setPromiseHook, as the frame that calls createHook. */
const SDK_CALLER = /\bsetPromiseHook \(.*[\\/]@temporalio[\\/]worker[\\/]lib[\\/]workflow[\\/]vm-shared\.js:/;

if (!isMainThread) {
  const createHook = v8.promiseHooks.createHook;
  v8.promiseHooks.createHook = function (this: unknown, ...args: Parameters<typeof createHook>) {
    // Only the direct caller counts: Node's async_hooks also calls createHook, and it may do so
    // while a workflow (run from vm-shared.js) first enters an AsyncLocalStorage, which the
    // SDK's cancellation scopes use. Refusing that call broke those scopes.
    const caller = (new Error().stack ?? '').split('\n')[2] ?? '';
    if (SDK_CALLER.test(caller)) throw new Error('workflow stack traces are off (WORKER_STACK_TRACES)');
    return createHook.apply(this, args);
  };
}
