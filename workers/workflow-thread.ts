/**
 * What the Temporal SDK's workflow threads run instead of its own thread script
 * (workers/workflow-stack-traces.ts): first the refusal of its promise hook
 * (workers/no-promise-hook.ts), then the SDK's script, named by the thread's last argument.
 *
 * (Not a `--require` in the thread's execArgv: Node refuses a thread whose execArgv holds the V8
 * flags the worker process was started with, such as --max-old-space-size.)
 */
import './no-promise-hook';

require(process.argv[process.argv.length - 1]);
