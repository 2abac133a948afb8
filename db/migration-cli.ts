/**
 * Operator commands for the blue-green migration workflow (`npm run migration -- <command>`):
 *   plan   [--config f.json]          dry run: preflight checks and the plan; changes nothing
 *   start  [--config f.json]          start a run (prints its id)
 *   status <runId> [--watch]          phases with progress bars (from the workflow's query)
 *   approve <runId> [cohort]          approve the cohort the run waits on
 *   retry <runId>                     retry the phase that blocked
 *   rollback <runId> [reason] [--restore]  undo everything done so far, newest first (--restore:
 *                                     restore the database from the dump instead of undoing v2's changes)
 *   abort <runId>                     stop where it is, without compensation
 *   keep-v1 <runId>                   cancel the pending decommission
 */
import { Client, Connection } from '@temporalio/client';
import { readFileSync } from 'node:fs';
import { migrationOptions, RUN_ID_PATTERN } from '../api/migrations/options';
import { taskQueue, temporalNamespace } from '../config/env';
import { temporalConnectionOptions } from '../config/temporal';
import {
  abortSignal,
  approveSignal,
  cancelDecommissionSignal,
  MIGRATION_WORKFLOW_TYPE,
  MigrationProgress,
  migrationWorkflowId,
  progressQuery,
  retrySignal,
  rollbackUpdate,
} from '../workflows/migration-api';
import { SA } from '../workflows/search-attributes';
import type { CliCommand, CliIo } from './cli';

async function withClient<T>(fn: (c: Client) => Promise<T>): Promise<T> {
  // TEMPORAL_ADDRESS with the TLS / API key settings (config/temporal.ts), as the gateway and worker.
  const connection = await Connection.connect(temporalConnectionOptions());
  try {
    return await fn(new Client({ connection, namespace: temporalNamespace() }));
  } finally {
    await connection.close();
  }
}

/** The config file, as JSON: validated by migrationOptions with the API's schema (see api/migrations/options.ts). */
function readConfig(args: string[]): unknown {
  const i = args.indexOf('--config');
  if (i < 0) return {};
  if (!args[i + 1]) throw new Error('--config needs a file');
  try {
    return JSON.parse(readFileSync(args[i + 1], 'utf8')) as unknown;
  } catch (err) {
    throw new Error(`--config ${args[i + 1]}: ${(err as Error).message}`);
  }
}

const need = (args: string[]): string => {
  if (!args[0] || args[0].startsWith('--')) throw new Error('a run id is required (see `npm run migration -- start`)');
  if (!new RegExp(RUN_ID_PATTERN).test(args[0])) throw new Error(`run id must match ${RUN_ID_PATTERN}`);
  return args[0];
};

export function bar(done: number, total: number, width = 24): string {
  const frac = total > 0 ? Math.min(1, done / total) : 0;
  const full = Math.round(frac * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}] ${String(Math.round(frac * 100)).padStart(3)}%`;
}

/** Renders a run's progress as text: one bar per phase, the import bar, and what it waits for. */
export function render(p: MigrationProgress): string[] {
  const lines = [`run ${p.runId} (${p.strategy}): ${p.status}${p.phase ? ` — phase ${p.phase}` : ''}`];
  for (const ph of p.phases) {
    const value = ph.status === 'done' || ph.status === 'compensated' || ph.status === 'skipped' ? 1 : ph.status === 'running' ? 0.5 : 0;
    const amount = ph.name === 'import' && p.import.total ? p.import.processed / p.import.total : value;
    lines.push(`  ${ph.name.padEnd(13)} ${bar(amount, 1)}  ${ph.status}`);
  }
  if (p.import.total) lines.push(`  import: ${p.import.processed}/${p.import.total} sessions, ${p.import.imported} imported, ${p.import.failed} not imported`);
  if (p.import.delta)
    lines.push(
      `  cut-over deltas: ${p.import.delta.processed} sessions of moving users checked, ${p.import.delta.reimported} re-imported (v1 wrote them), ${p.import.delta.adopted} adopted`,
    );
  if (p.awaitingApproval) lines.push(`  waiting for approval of cohort "${p.awaitingApproval}": npm run migration -- approve ${p.runId}`);
  if (p.blockedReason) lines.push(`  ${p.blockedReason}`);
  if (p.decommissionAt && p.status === 'waiting-to-decommission')
    lines.push(`  v1 is decommissioned at ${p.decommissionAt} (keep it: npm run migration -- keep-v1 ${p.runId})`);
  for (const s of p.rollback)
    lines.push(`  rollback: ${s.status === 'done' ? 'ok  ' : s.status === 'skipped' ? 'skip' : 'FAIL'} ${s.step}${s.detail ? ` — ${s.detail}` : ''}`);
  return lines;
}

async function startRun(args: string[], io: CliIo, dryRun: boolean): Promise<number> {
  const config = readConfig(args);
  const options = migrationOptions(dryRun && config && typeof config === 'object' && !Array.isArray(config) ? { ...config, dryRun: true } : config);
  return withClient(async (c) => {
    const h = await c.workflow.start(MIGRATION_WORKFLOW_TYPE, {
      workflowId: migrationWorkflowId(options.runId),
      taskQueue: taskQueue(),
      args: [options],
      memo: { runId: options.runId, strategy: options.strategy },
      typedSearchAttributes: [{ key: SA.migrationPhase, value: 'starting' }],
    });
    if (!dryRun) {
      io.out(`started ${options.runId} (workflow ${h.workflowId}); watch: npm run migration -- status ${options.runId} --watch`);
      return 0;
    }
    const p = (await h.result()) as MigrationProgress;
    io.out('plan:');
    for (const l of p.plan) io.out(`  - ${l}`);
    io.out(p.phases[0].detail ?? '');
    return p.status === 'planned' ? 0 : 1;
  });
}

export const MIGRATION_COMMANDS: Record<string, CliCommand> = {
  plan: { summary: 'dry run: preflight checks and the plan, nothing changed', run: (a, io) => startRun(a, io, true) },
  start: { summary: 'start a blue-green migration run (--config file.json)', run: (a, io) => startRun(a, io, false) },
  progress: {
    summary: '<runId> [--watch]: phases with progress bars',
    run: (args, io) =>
      withClient(async (c) => {
        const h = c.workflow.getHandle(migrationWorkflowId(need(args)));
        for (;;) {
          const p = await h.query(progressQuery);
          for (const l of render(p)) io.out(l);
          if (!args.includes('--watch') || ['completed', 'rolled-back', 'aborted', 'planned'].includes(p.status)) return 0;
          await new Promise((r) => setTimeout(r, 2000));
          io.out('');
        }
      }),
  },
  approve: {
    summary: '<runId> [cohort]: approve the waiting cohort',
    run: (a) => withClient((c) => c.workflow.getHandle(migrationWorkflowId(need(a))).signal(approveSignal, a[1])).then(() => 0),
  },
  retry: {
    summary: '<runId>: retry the blocked phase',
    run: (a) => withClient((c) => c.workflow.getHandle(migrationWorkflowId(need(a))).signal(retrySignal)).then(() => 0),
  },
  rollback: {
    summary: "<runId> [reason] [--restore]: undo everything, newest first (v1's writes kept; --restore: from the dump)",
    run: (a, io) =>
      withClient(async (c) => {
        const restore = a.includes('--restore');
        const reason = a
          .slice(1)
          .filter((x) => x !== '--restore')
          .join(' ');
        await c.workflow.getHandle(migrationWorkflowId(need(a))).executeUpdate(rollbackUpdate, { args: [reason, restore ? { database: 'restore' } : {}] });
        io.out(`rollback of ${a[0]} accepted; watch: npm run migration -- status ${a[0]} --watch`);
        return 0;
      }),
  },
  abort: {
    summary: '<runId>: stop without compensation',
    run: (a) => withClient((c) => c.workflow.getHandle(migrationWorkflowId(need(a))).signal(abortSignal, a[1])).then(() => 0),
  },
  'keep-v1': {
    summary: '<runId>: cancel the pending decommission',
    run: (a) => withClient((c) => c.workflow.getHandle(migrationWorkflowId(need(a))).signal(cancelDecommissionSignal)).then(() => 0),
  },
};
