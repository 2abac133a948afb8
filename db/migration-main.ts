/**
 * `npm run migration -- <command>`: the scripted v1 → v2 blue-green migration run (a Temporal
 * workflow). The schema is `npm run db:migrate`.
 *
 *   plan [--config f.json] | start [--config f.json] | status <runId> [--watch] | approve <runId> [cohort]
 *   retry <runId> | rollback <runId> [reason] [--restore] | abort <runId> | keep-v1 <runId>
 */
import { CliCommand, CliIo, runAsMain, runCli } from './cli';
import { MIGRATION_COMMANDS } from './migration-cli';

const { progress, ...rest } = MIGRATION_COMMANDS;
/** `status` is the run's progress (phases, progress bars); `progress` stays as an alias. */
export const RUN_COMMANDS: Record<string, CliCommand> = { plan: rest.plan, start: rest.start, status: progress, ...rest, progress };

export const main = (argv: string[], io: CliIo): Promise<number> => runCli(argv, io, { program: 'migration', commands: RUN_COMMANDS });

if (require.main === module) runAsMain(main);
