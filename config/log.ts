import pino from 'pino';
import { logLevel, LogLevel } from './env';

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

/** Field names whose values never reach a log line (top level and one level down, e.g. `headers.authorization`). */
export const REDACTED_FIELDS: readonly string[] = [
  'password',
  'passwd',
  'token',
  'accessToken',
  'access_token',
  'refreshToken',
  'refresh_token',
  'secret',
  'clientSecret',
  'client_secret',
  'authorization',
  'Authorization',
  'cookie',
  'Cookie',
  'set-cookie',
  'api_key',
  'apiKey',
  'databaseUrl',
  'database_url',
  'DATABASE_URL',
];
const REDACT_PATHS = REDACTED_FIELDS.flatMap((f) => {
  const key = /^[A-Za-z_$][\w$]*$/.test(f) ? f : `["${f}"]`;
  return [key, key.startsWith('[') ? `*${key}` : `*.${key}`];
});

/** One shared synchronous stdout: a process that exits (or is killed) right after logging has written the line. */
let stdout: pino.DestinationStream | undefined;

/**
 * JSON lines through pino: `{"level":"info","time":"…","component":"gateway",…fields,"msg":"Server started"}`.
 * Secret-looking fields are replaced by "[redacted]". `destination` is for tests.
 */
export function createLogger(component: string, level: LogLevel = logLevel(), destination?: pino.DestinationStream): Logger {
  const dest = destination ?? (stdout ??= pino.destination({ dest: 1, sync: true }));
  const p = pino(
    {
      level,
      base: { pid: process.pid, component },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      serializers: { err: pino.stdSerializers.err, error: pino.stdSerializers.err },
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    },
    dest,
  );
  const write = (lvl: LogLevel) => (msg: string, fields?: Record<string, unknown>) => {
    if (fields && Object.keys(fields).length) p[lvl](fields, msg);
    else p[lvl](msg);
  };
  return { debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') };
}
