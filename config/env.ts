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

const GO_PART = /(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)/y;
const GO_UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ...UNIT_MS };

/**
 * A session lifetime as v1 stores it (sessions.idle_timeout / max_session_duration, a Session CRD's
 * idleTimeout / maxSessionDuration: Go durations such as "30m", "8h", "1h30m", "30m0s") or as v2
 * accepts it (also "2d"). "", "0" and "0s" mean "never" (0). Throws on anything else.
 */
export function parseLifetime(value: string | null | undefined, name = 'duration'): number {
  const v = (value ?? '').trim();
  if (v === '' || v === '0') return 0;
  let total = 0;
  GO_PART.lastIndex = 0;
  while (GO_PART.lastIndex < v.length) {
    const m = GO_PART.exec(v);
    if (!m) throw new Error(`${name}: "${value}" is not a duration (examples: 30m, 8h, 1h30m; 0 = never)`);
    total += Number(m[1]) * GO_UNIT_MS[m[2]];
  }
  return Math.round(total);
}

/** A lifetime back in the form v1 writes ("8h", "30m", "1h30m", "45s"; "0" for never). */
export function formatLifetime(ms: number): string {
  if (!ms) return '0';
  let rest = Math.round(ms / 1000);
  const h = Math.floor(rest / 3600);
  rest -= h * 3600;
  const m = Math.floor(rest / 60);
  const s = rest - m * 60;
  return `${h ? `${h}h` : ''}${m ? `${m}m` : ''}${s || (!h && !m) ? `${s}s` : ''}`;
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

/**
 * Dev mode: `STREAMSPACE_DEV_MODE=true` (set by `npm run dev` and the test harness, never by the
 * Dockerfile, compose or the manifests). Only in dev mode may a process start with missing or
 * well-known secrets; every process then logs a loud warning.
 */
export function devMode(env: NodeJS.ProcessEnv = process.env): boolean {
  return envBool('STREAMSPACE_DEV_MODE', false, env);
}

/** Values that were shipped as defaults somewhere (code, compose, docs): never accepted as a secret. */
export const KNOWN_DEFAULT_SECRETS: ReadonlySet<string> = new Set(
  [
    'streamspace-dev-secret-change-me',
    'change-me-dev-only',
    'change-me',
    'changeme',
    'secret',
    'admin',
    'password',
    'streamspace',
    'postgres',
    'streamspace-dev-jwt-secret-not-for-production-use',
    'streamspace-dev-agent-secret-not-for-production-use',
  ].map((s) => s.toLowerCase()),
);

/** Minimum length of JWT_SECRET and AGENT_TOKEN_SECRET outside dev mode (bytes of the UTF-8 value). */
export const MIN_SECRET_BYTES = 32;

export interface SecretRule {
  name: string;
  /** Minimum UTF-8 length; 0: any non-empty value. */
  minBytes?: number;
  /** Must differ from these variables' values (e.g. AGENT_TOKEN_SECRET ≠ JWT_SECRET). */
  distinctFrom?: string[];
  /** Only checked when this returns true (e.g. DB_PASSWORD only when DATABASE_URL is unset). */
  when?: (env: NodeJS.ProcessEnv) => boolean;
  hint?: string;
}

/** The problems with the secrets `rules` name, one message each (empty: all good). */
export function secretProblems(rules: SecretRule[], env: NodeJS.ProcessEnv = process.env): string[] {
  const problems: string[] = [];
  for (const r of rules) {
    if (r.when && !r.when(env)) continue;
    const v = env[r.name];
    const hint = r.hint ? ` (${r.hint})` : '';
    if (v === undefined || v.trim() === '') problems.push(`${r.name} must be set${hint}`);
    else if (KNOWN_DEFAULT_SECRETS.has(v.trim().toLowerCase())) problems.push(`${r.name} is a published default value: set your own${hint}`);
    else if (r.minBytes && Buffer.byteLength(v, 'utf8') < r.minBytes) problems.push(`${r.name} must be at least ${r.minBytes} bytes long${hint}`);
    else {
      const same = (r.distinctFrom ?? []).find((o) => env[o] !== undefined && env[o] === v);
      if (same) problems.push(`${r.name} must differ from ${same}`);
    }
  }
  return problems;
}

/** What each process needs (see docs/SECURITY.md). */
const RANDOM_HINT = 'e.g. `openssl rand -base64 48`';
export const DB_PASSWORD_RULE: SecretRule = {
  name: 'DB_PASSWORD',
  when: (env) => !envOptional('DATABASE_URL', env),
  hint: 'or DATABASE_URL',
};
export const GATEWAY_SECRETS: SecretRule[] = [
  { name: 'JWT_SECRET', minBytes: MIN_SECRET_BYTES, hint: RANDOM_HINT },
  { name: 'AGENT_TOKEN_SECRET', minBytes: MIN_SECRET_BYTES, distinctFrom: ['JWT_SECRET'], hint: RANDOM_HINT },
  DB_PASSWORD_RULE,
];
export const WORKER_SECRETS: SecretRule[] = [DB_PASSWORD_RULE];
export const AGENT_SECRETS: SecretRule[] = [{ name: 'AGENT_TOKEN', minBytes: 20, hint: 'from POST /api/v1/agents/tokens' }];

/**
 * Start-up guard for every process: outside dev mode, exits with code 78 (EX_CONFIG) after one
 * line on stderr naming the variable(s); in dev mode, warns loudly and goes on.
 */
export function requireSecrets(component: string, rules: SecretRule[], env: NodeJS.ProcessEnv = process.env): void {
  let dev: boolean;
  try {
    dev = devMode(env);
  } catch (err) {
    refuseToStart(component, (err as Error).message);
  }
  const problems = secretProblems(rules, env);
  if (dev) {
    process.stderr.write(
      `WARNING: ${component} runs in STREAMSPACE_DEV_MODE: missing secrets get public development defaults; never expose this process` +
        (problems.length ? ` (${problems.join('; ')})` : '') +
        '\n',
    );
    return;
  }
  if (problems.length) refuseToStart(component, problems.join('; '));
}

/** Prints `<component>: refusing to start: <reason>` (one line) and exits 78. */
export function refuseToStart(component: string, reason: string): never {
  process.stderr.write(`${component}: refusing to start: ${reason.replace(/\s*\n\s*/g, ' ')}\n`);
  process.exit(78);
}

/** PLACEMENT_WHEN_FULL: when every agent of a platform is full, `queue` a start (until its timeout) or `fail` it at once. */
export function placementWhenFull(env: NodeJS.ProcessEnv = process.env): 'queue' | 'fail' {
  const v = envString('PLACEMENT_WHEN_FULL', 'queue', env);
  if (v !== 'queue' && v !== 'fail') throw new Error(`PLACEMENT_WHEN_FULL must be queue or fail, not "${v}"`);
  return v;
}
