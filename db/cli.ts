/**
 * `npm run migrate [-- <command>]`
 *
 *   (none) | up   apply pending migrations and print applied/skipped versions
 *   status        list each migration version with its applied time (or "pending")
 *   plan|start|progress|approve|retry|rollback|abort|keep-v1   the blue-green migration run (db/migration-cli.ts)
 *   help          usage
 *
 * The database is DATABASE_URL, else DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD (config/env.ts);
 * MIGRATIONS_DIR overrides the folder of .sql files. More commands (the blue-green migration
 * workflow: start, status, approve, rollback, abort) plug into COMMANDS below.
 */
import { databaseUrl } from '../config/env';
import { migrate, migrationStatus } from './migrate';
import { MIGRATION_COMMANDS } from './migration-cli';

export interface CliIo {
  out: (line: string) => void;
  err: (line: string) => void;
}

export interface CliCommand {
  summary: string;
  run: (args: string[], io: CliIo) => Promise<number>;
}

const up: CliCommand = {
  summary: 'apply pending migrations (default)',
  async run(_args, io) {
    const result = await migrate(databaseUrl(), { log: (m) => io.out(m) });
    io.out(`applied: ${result.applied.length ? result.applied.join(', ') : '(none)'}`);
    io.out(`skipped: ${result.skipped.length ? result.skipped.join(', ') : '(none)'}`);
    return 0;
  },
};

const status: CliCommand = {
  summary: "schema versions applied; with a run id: that migration run's progress (--watch)",
  async run(args, io) {
    if (args[0] && !args[0].startsWith('--')) return MIGRATION_COMMANDS.progress.run(args, io);
    const { migrations, unknown } = await migrationStatus(databaseUrl());
    const width = Math.max(7, ...migrations.map((m) => m.version.length), ...unknown.map((u) => u.version.length));
    io.out(`${'version'.padEnd(width)}  applied_at`);
    for (const m of migrations) {
      const when = m.applied ? (m.appliedAt ? m.appliedAt.toISOString() : 'applied') : 'pending';
      io.out(`${m.version.padEnd(width)}  ${when}  (${m.file})`);
    }
    for (const u of unknown) {
      io.out(`${u.version.padEnd(width)}  ${u.appliedAt ? u.appliedAt.toISOString() : 'applied'}  (no file here)`);
    }
    return 0;
  },
};

/** Subcommands by name; add new ones here. */
export const COMMANDS: Record<string, CliCommand> = { up, status, ...MIGRATION_COMMANDS };

export function usage(): string {
  const lines = ['usage: npm run migrate [-- <command> [args]]', '', 'commands:'];
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length), 4);
  for (const [name, cmd] of Object.entries(COMMANDS)) lines.push(`  ${name.padEnd(width)}  ${cmd.summary}`);
  lines.push(`  ${'help'.padEnd(width)}  show this message`);
  return lines.join('\n');
}

export async function main(argv: string[], io: CliIo): Promise<number> {
  const [name = 'up', ...rest] = argv;
  if (name === 'help' || name === '--help' || name === '-h') {
    io.out(usage());
    return 0;
  }
  const cmd = Object.prototype.hasOwnProperty.call(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!cmd) {
    io.err(`unknown command: ${name}`);
    io.err(usage());
    return 2;
  }
  try {
    return await cmd.run(rest, io);
  } catch (err) {
    io.err(`migrate ${name} failed: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

if (require.main === module) {
  main(process.argv.slice(2), {
    out: (l) => process.stdout.write(l + '\n'),
    err: (l) => process.stderr.write(l + '\n'),
  }).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`${String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
