/**
 * Environment parsing shared by every process. Each documented variable is read through these
 * helpers so a bad value fails at start-up with the variable's name, not later with a NaN.
 */

const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses "30s", "5m", "250ms", "1.5h" or a bare number of seconds into milliseconds. */
export function parseDuration(value: string, name = 'duration'): number {
  const m = DURATION.exec(value.trim());
  if (!m) throw new Error(`${name}: "${value}" is not a duration (examples: 500ms, 30s, 5m, 2h)`);
  return Math.round(Number(m[1]) * UNIT_MS[m[2] ?? 's']);
}

export function envString(name: string, fallback: string, env: NodeJS.ProcessEnv = process.env): string {
  const v = env[name];
  return v === undefined || v === '' ? fallback : v;
}

export function envOptional(name: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const v = env[name];
  return v === undefined || v === '' ? undefined : v;
}

export function envRequired(name: string, env: NodeJS.ProcessEnv = process.env): string {
  const v = env[name];
  if (v === undefined || v === '') throw new Error(`${name} must be set`);
  return v;
}

export function envInt(name: string, fallback: number, env: NodeJS.ProcessEnv = process.env): number {
  const v = env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name}: "${v}" is not a non-negative integer`);
  return n;
}

export function envBool(name: string, fallback: boolean, env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env[name];
  if (v === undefined || v === '') return fallback;
  if (/^(1|true|yes|on)$/i.test(v)) return true;
  if (/^(0|false|no|off)$/i.test(v)) return false;
  throw new Error(`${name}: "${v}" is not a boolean (true/false)`);
}

export function envDuration(name: string, fallback: string, env: NodeJS.ProcessEnv = process.env): number {
  return parseDuration(envString(name, fallback, env), name);
}

/**
 * PostgreSQL connection settings: DATABASE_URL wins; otherwise the spec's DB_HOST, DB_PORT,
 * DB_NAME, DB_USER, DB_PASSWORD (defaults match scripts/provision.sh's local cluster).
 */
export function databaseUrl(env: NodeJS.ProcessEnv = process.env): string {
  const url = envOptional('DATABASE_URL', env);
  if (url) return url;
  const host = envString('DB_HOST', '127.0.0.1', env);
  const port = envInt('DB_PORT', 55432, env);
  const name = envString('DB_NAME', 'streamspace', env);
  const user = envString('DB_USER', 'streamspace', env);
  const password = envString('DB_PASSWORD', 'streamspace', env);
  return `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@${host}:${port}/${encodeURIComponent(name)}`;
}

export function temporalAddress(env: NodeJS.ProcessEnv = process.env): string {
  return envString('TEMPORAL_ADDRESS', '127.0.0.1:57233', env);
}

export function temporalNamespace(env: NodeJS.ProcessEnv = process.env): string {
  return envString('TEMPORAL_NAMESPACE', 'default', env);
}

export function taskQueue(env: NodeJS.ProcessEnv = process.env): string {
  return envString('TEMPORAL_TASK_QUEUE', 'streamspace-sessions', env);
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export function logLevel(env: NodeJS.ProcessEnv = process.env): LogLevel {
  const v = envString('LOG_LEVEL', 'info', env).toLowerCase();
  if (v === 'debug' || v === 'info' || v === 'warn' || v === 'error') return v;
  throw new Error(`LOG_LEVEL: "${v}" must be one of debug, info, warn, error`);
}
