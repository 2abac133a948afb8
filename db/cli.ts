/**
 * `npm run db:migrate [-- <command>]`: the database schema (never the v1 → v2 migration run,
 * which is `npm run migration`, db/migration-main.ts).
 *
 *   (none) | up   apply pending schema migrations and print applied/skipped versions
 *   status        list each schema version with its applied time (or "pending")
 *   help          usage
 *
 * The database is DATABASE_URL, else DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASSWORD (config/env.ts);
 * MIGRATIONS_DIR overrides the folder of .sql files.
 */
import { databaseUrl } from '../config/env';
import { migrate, migrationStatus } from './migrate';

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
  summary: 'schema versions: applied (when) or pending',
  async run(args, io) {
    if (args[0] && !args[0].startsWith('--')) {
      io.err(`"${args[0]}" looks like a migration run id: that is \`npm run migration -- status ${args[0]}\``);
      return 2;
    }
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
export const COMMANDS: Record<string, CliCommand> = { up, status };

/** Usage of a command set, as `npm run <program> -- <command>`. */
export function usage(program = 'db:migrate', commands: Record<string, CliCommand> = COMMANDS): string {
  const lines = [`usage: npm run ${program} [-- <command> [args]]`, '', 'commands:'];
  const width = Math.max(...Object.keys(commands).map((n) => n.length), 4);
  for (const [name, cmd] of Object.entries(commands)) lines.push(`  ${name.padEnd(width)}  ${cmd.summary}`);
  lines.push(`  ${'help'.padEnd(width)}  show this message`);
  return lines.join('\n');
}

/** Runs one command of a set (no command: `fallback`, or the usage). */
export async function runCli(
  argv: string[],
  io: CliIo,
  opts: { program: string; commands: Record<string, CliCommand>; fallback?: string } = { program: 'db:migrate', commands: COMMANDS, fallback: 'up' },
): Promise<number> {
  const [name = opts.fallback ?? 'help', ...rest] = argv;
  if (name === 'help' || name === '--help' || name === '-h') {
    io.out(usage(opts.program, opts.commands));
    return argv.length ? 0 : 2;
  }
  const cmd = Object.prototype.hasOwnProperty.call(opts.commands, name) ? opts.commands[name] : undefined;
  if (!cmd) {
    io.err(`unknown command: ${name}`);
    io.err(usage(opts.program, opts.commands));
    return 2;
  }
  try {
    return await cmd.run(rest, io);
  } catch (err) {
    io.err(`${opts.program} ${name} failed: ${err instanceof Error ? err.message : String(err)}`);
    return 1;
  }
}

export const main = (argv: string[], io: CliIo): Promise<number> => runCli(argv, io);

/** Runs `run` as the process's main program with stdout/stderr. */
export function runAsMain(run: (argv: string[], io: CliIo) => Promise<number>): void {
  run(process.argv.slice(2), {
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

if (require.main === module) runAsMain(main);
