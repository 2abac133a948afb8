/**
 * Replays session histories on the workflow code the stack's workers run: the bundle `npm run
 * build` writes (dist/workflow-bundle.js). A change that would break a running session's replay
 * (a workflow step added, dropped or reordered without a patch) throws DeterminismViolationError.
 */
import { temporal } from '@temporalio/proto';
import { Worker } from '@temporalio/worker';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from './stack';

type History = temporal.api.history.v1.IHistory;

export const HISTORY_FIXTURES = path.join(ROOT, 'test', 'fixtures', 'histories');

export async function replayOnBuiltCode(history: History, workflowId: string): Promise<void> {
  const codePath = path.join(ROOT, 'dist', 'workflow-bundle.js');
  if (!existsSync(codePath)) throw new Error(`${codePath} is missing: run npm run build first`);
  await Worker.runReplayHistory({ workflowBundle: { codePath } }, history, workflowId);
}

/** The recorded histories (binary protobuf History, as fetchHistory returns it; see the folder's README), by file name. */
export function historyFixtures(): { name: string; history: History }[] {
  return readdirSync(HISTORY_FIXTURES)
    .filter((f) => f.endsWith('.binpb'))
    .sort()
    .map((name) => ({ name, history: temporal.api.history.v1.History.decode(readFileSync(path.join(HISTORY_FIXTURES, name))) }));
}
