/**
 * The import as a child workflow: one activity per page, a cursor (never a list of ids) in its
 * arguments, continue-as-new every `pagesPerRun` pages so its history stays bounded whatever the
 * number of sessions; progress goes to the parent run by a throttled signal.
 */
import { ChildWorkflowCancellationType, continueAsNew, executeChild, getExternalWorkflowHandle } from '@temporalio/workflow';
import type { ImportCursor, ImportScope, V1Columns } from '../../activities/migration/activities';
import { importProgressSignal, ImportFailure, ImportTotals, MigrationOptions, migrationWorkflowId } from '../migration-api';
import { importer } from './activities';

export interface ImportRunArgs {
  importRun: {
    o: MigrationOptions;
    parentId: string;
    scope: ImportScope;
    v1Cols: V1Columns;
    cursor: ImportCursor | null;
    totals: ImportTotals;
    pagesPerRun: number;
  };
}

const PAGES_PER_RUN = 200;
const SIGNAL_EVERY_MS = 1000;
const ZERO: ImportTotals = { processed: 0, imported: 0, unchanged: 0, failed: 0, adopted: 0, pages: 0 };

/** The child workflow (`migration/<runId>/<name>`): pages until the cursor runs out. */
export async function migrationImportWorkflow({ importRun: a }: ImportRunArgs): Promise<ImportTotals> {
  const parent = getExternalWorkflowHandle(a.parentId);
  const totals = { ...a.totals };
  let cursor = a.cursor;
  let failures: ImportFailure[] = [];
  let pages = 0;
  let last = Date.now();
  const report = async () => {
    await parent.signal(importProgressSignal, { ...totals, failures, delta: a.scope.mode === 'delta' });
    failures = [];
    last = Date.now();
  };
  while (cursor) {
    const r = await importer.importPage(a.o, a.scope, a.v1Cols, cursor);
    totals.processed += r.processed;
    totals.imported += r.imported;
    totals.unchanged += r.unchanged;
    totals.failed += r.failed;
    totals.adopted += r.adopted;
    totals.pages++;
    failures.push(...r.failures.slice(0, Math.max(0, 200 - failures.length)));
    cursor = r.next;
    pages++;
    if (cursor && Date.now() - last >= SIGNAL_EVERY_MS) await report();
    // The pause between pages (importPaceMs) is taken inside importPage: a workflow timer fires
    // with about a second of latency, which made every page take a second or more.
    if (cursor && pages >= a.pagesPerRun) {
      await report();
      await continueAsNew<typeof migrationImportWorkflow>({ importRun: { ...a, cursor, totals } });
    }
  }
  await report();
  return totals;
}

/** Parent side: runs one import (the phase, or a cut-over delta) as a child and waits for it. */
export function runImportChild(o: MigrationOptions, name: string, scope: ImportScope, v1Cols: V1Columns, cursor: ImportCursor): Promise<ImportTotals> {
  const args: ImportRunArgs = {
    importRun: { o, parentId: migrationWorkflowId(o.runId), scope, v1Cols, cursor, totals: ZERO, pagesPerRun: PAGES_PER_RUN },
  };
  return executeChild(migrationImportWorkflow, {
    workflowId: `${migrationWorkflowId(o.runId)}/${name}`,
    args: [args],
    cancellationType: ChildWorkflowCancellationType.WAIT_CANCELLATION_COMPLETED,
  });
}
