/**
 * `npm run compose:check`: validates docker-compose.yml with deploy/compose/streamspace.env without
 * pulling or building anything.
 *
 *   1. `docker compose config -q` (the Compose v2 plugin) or else `docker-compose config -q`
 *      (Compose v1, Debian's docker-compose package), when one is installed: with placeholder
 *      secrets it must pass; without them it must refuse, naming every missing secret.
 *   2. Always, with no tool at all: the YAML is parsed (merge keys on) and interpolated as Compose
 *      does (${VAR}, ${VAR:-default}, ${VAR:?error}, $$), then checked: known keys only, every
 *      service with an image or a build context holding its Dockerfile, depends_on targets and
 *      conditions, named volumes and networks declared, bind-mounted files present, env_file
 *      present, health checks where service_healthy needs them; and StreamSpace's own wiring
 *      (secrets required and given only to the services that hold them, the env file's hosts,
 *      users, image and network names matching the compose file's).
 *
 * Exit 0 when everything passes; otherwise one line per problem and exit 1.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';

export const ROOT = (() => {
  let dir = __dirname;
  while (!existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
})();
export const COMPOSE_FILE = path.join(ROOT, 'docker-compose.yml');
export const ENV_FILE = path.join(ROOT, 'deploy', 'compose', 'streamspace.env');

/** The secrets docker-compose.yml requires (${VAR:?...}), and the services that may receive each. */
export const SECRETS: Record<string, string[]> = {
  DB_PASSWORD: ['postgres', 'setup', 'agent-bootstrap', 'control-plane', 'worker'],
  TEMPORAL_DB_PASSWORD: ['postgres', 'temporal'],
  REDIS_PASSWORD: ['redis', 'control-plane', 'worker'],
  JWT_SECRET: ['control-plane'],
  AGENT_TOKEN_SECRET: ['control-plane', 'agent-bootstrap'],
  ADMIN_PASSWORD: ['control-plane'],
};

/** Placeholder values of the right shape for validation only (never a working secret anywhere). */
export function placeholderSecrets(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of Object.keys(SECRETS)) out[name] = `placeholder-${name.toLowerCase()}-0123456789abcdef0123456789abcdef`;
  return out;
}

/** KEY=VALUE lines as Compose reads an env_file (comments and blank lines skipped, optional quotes). */
export function parseEnvFile(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [i, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line);
    if (!m) throw new Error(`env file line ${i + 1}: not KEY=VALUE: ${line}`);
    let v = m[2];
    if (/^'.*'$/.test(v) || /^".*"$/.test(v)) v = v.slice(1, -1);
    out[m[1]] = v;
  }
  return out;
}

/** Compose's interpolation of one string; required variables that are unset or empty go to `missing`. */
export function interpolate(value: string, vars: Record<string, string | undefined>, missing: string[] = []): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (all, name, op, arg, bare) => {
    if (all === '$$') return '$';
    const n = (name ?? bare) as string;
    const v = vars[n];
    if (!op) return v ?? '';
    const unset = op.startsWith(':') ? v === undefined || v === '' : v === undefined;
    if (op.endsWith('-')) return unset ? interpolate(arg ?? '', vars, missing) : v!;
    if (unset) missing.push(`${n}: ${arg || 'required'}`);
    return v ?? '';
  });
}

function interpolateDeep(node: unknown, vars: Record<string, string | undefined>, missing: string[]): unknown {
  if (typeof node === 'string') return interpolate(node, vars, missing);
  if (Array.isArray(node)) return node.map((n) => interpolateDeep(n, vars, missing));
  if (node && typeof node === 'object') return Object.fromEntries(Object.entries(node).map(([k, v]) => [k, interpolateDeep(v, vars, missing)]));
  return node;
}

export interface Service {
  image?: string;
  build?: string | { context: string; dockerfile?: string; args?: Record<string, string> };
  command?: string | string[];
  entrypoint?: string | string[];
  env_file?: string | string[];
  environment?: Record<string, string> | string[];
  depends_on?: string[] | Record<string, { condition?: string }>;
  volumes?: string[];
  networks?: string[] | Record<string, unknown>;
  network_mode?: string;
  healthcheck?: { test?: string[] | string };
  user?: string;
  ports?: string[];
  restart?: string;
  [key: string]: unknown;
}

export interface ComposeDoc {
  services: Record<string, Service>;
  networks?: Record<string, { name?: string } | null>;
  volumes?: Record<string, unknown>;
  [key: string]: unknown;
}

/** Parses and interpolates the compose file; `missing` lists the required variables that were not given. */
export function loadCompose(vars: Record<string, string | undefined>, file = COMPOSE_FILE): { doc: ComposeDoc; missing: string[] } {
  const raw = parse(readFileSync(file, 'utf8'), { merge: true }) as Record<string, unknown>;
  // Extension fields (x-*) are not interpolated by Compose.
  const body = Object.fromEntries(Object.entries(raw).filter(([k]) => !k.startsWith('x-')));
  const missing: string[] = [];
  const doc = interpolateDeep(body, vars, missing) as ComposeDoc;
  return { doc, missing: [...new Set(missing)] };
}

/** A service's environment as its container gets it: env_file(s), then `environment`. */
export function serviceEnv(svc: Service, root = ROOT): Record<string, string> {
  const env: Record<string, string> = {};
  for (const f of [svc.env_file ?? []].flat()) Object.assign(env, parseEnvFile(readFileSync(path.resolve(root, f), 'utf8')));
  const e = svc.environment ?? {};
  if (Array.isArray(e))
    for (const kv of e) {
      const i = kv.indexOf('=');
      if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
    }
  else for (const [k, v] of Object.entries(e)) env[k] = v === null || v === undefined ? '' : String(v);
  return env;
}

const TOP_KEYS = new Set(['version', 'name', 'services', 'networks', 'volumes', 'configs', 'secrets']);
const SERVICE_KEYS = new Set(
  (
    'build command container_name depends_on entrypoint env_file environment healthcheck image labels network_mode networks ports restart ' +
    'user volumes working_dir profiles deploy cap_add cap_drop security_opt read_only tmpfs ulimits stop_grace_period stop_signal logging ' +
    'extra_hosts hostname init pull_policy expose secrets configs shm_size privileged devices dns platform stdin_open tty'
  ).split(' '),
);
const CONDITIONS = new Set(['service_started', 'service_healthy', 'service_completed_successfully']);
const RESTART = new Set(['no', 'always', 'on-failure', 'unless-stopped']);

/** Compose-level problems of an interpolated document (empty: none). */
export function checkCompose(doc: ComposeDoc, root = ROOT): string[] {
  const p: string[] = [];
  for (const k of Object.keys(doc)) if (!TOP_KEYS.has(k)) p.push(`top level: unknown key ${k}`);
  const services = doc.services ?? {};
  if (!Object.keys(services).length) p.push('no services');
  const networks = new Set(['default', ...Object.keys(doc.networks ?? {})]);
  const volumes = new Set(Object.keys(doc.volumes ?? {}));
  for (const [name, s] of Object.entries(services)) {
    const at = `services.${name}`;
    for (const k of Object.keys(s)) if (!SERVICE_KEYS.has(k) && !k.startsWith('x-')) p.push(`${at}: unknown key ${k}`);
    if (!s.image && !s.build) p.push(`${at}: neither image nor build`);
    if (s.build) {
      const b = typeof s.build === 'string' ? { context: s.build } : s.build;
      const ctx = path.resolve(root, b.context ?? '.');
      const dockerfile = path.resolve(ctx, b.dockerfile ?? 'Dockerfile');
      if (!existsSync(ctx) || !statSync(ctx).isDirectory()) p.push(`${at}.build: context ${b.context} is not a directory`);
      else if (!existsSync(dockerfile)) p.push(`${at}.build: no ${path.relative(root, dockerfile)}`);
      else if (b.args) {
        const declared = new Set([...readFileSync(dockerfile, 'utf8').matchAll(/^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)/gm)].map((m) => m[1]));
        for (const a of Object.keys(b.args)) if (!declared.has(a)) p.push(`${at}.build.args: ${a} is not an ARG of ${path.relative(root, dockerfile)}`);
      }
    }
    for (const f of [s.env_file ?? []].flat()) if (!existsSync(path.resolve(root, f))) p.push(`${at}.env_file: ${f} does not exist`);
    for (const key of ['command', 'entrypoint'] as const) {
      const v = s[key];
      if (v !== undefined && typeof v !== 'string' && !(Array.isArray(v) && v.every((x) => typeof x === 'string')))
        p.push(`${at}.${key}: not a string or list of strings`);
    }
    if (s.environment && !Array.isArray(s.environment))
      for (const [k, v] of Object.entries(s.environment)) if (v !== null && typeof v === 'object') p.push(`${at}.environment.${k}: not a scalar`);
    const deps: Record<string, { condition?: string }> = Array.isArray(s.depends_on)
      ? Object.fromEntries(s.depends_on.map((d) => [d, {}]))
      : (s.depends_on ?? {});
    for (const [dep, spec] of Object.entries(deps)) {
      if (!services[dep]) p.push(`${at}.depends_on: no service ${dep}`);
      const cond = spec?.condition ?? 'service_started';
      if (!CONDITIONS.has(cond)) p.push(`${at}.depends_on.${dep}: unknown condition ${cond}`);
      if (cond === 'service_healthy' && services[dep] && !services[dep].healthcheck)
        p.push(`${at}.depends_on.${dep}: service_healthy but ${dep} has no healthcheck`);
      if (dep === name) p.push(`${at}.depends_on: depends on itself`);
    }
    for (const v of s.volumes ?? []) {
      if (typeof v !== 'string') continue;
      const [src, dst] = v.split(':');
      if (!dst || !dst.startsWith('/')) p.push(`${at}.volumes: ${v}: no absolute target path`);
      if (src.startsWith('.') && !existsSync(path.resolve(root, src))) p.push(`${at}.volumes: ${src} does not exist`);
      else if (!src.startsWith('.') && !src.startsWith('/') && !volumes.has(src)) p.push(`${at}.volumes: named volume ${src} is not declared under volumes`);
    }
    const nets = Array.isArray(s.networks) ? s.networks : Object.keys(s.networks ?? {});
    for (const n of nets) if (!networks.has(n)) p.push(`${at}.networks: ${n} is not declared under networks`);
    if (s.network_mode && nets.length) p.push(`${at}: network_mode and networks together`);
    if (s.restart && !RESTART.has(s.restart) && !/^on-failure:\d+$/.test(s.restart)) p.push(`${at}.restart: ${s.restart}`);
    const test = s.healthcheck?.test;
    if (test !== undefined && Array.isArray(test) && !['CMD', 'CMD-SHELL', 'NONE'].includes(test[0]))
      p.push(`${at}.healthcheck.test: must start with CMD, CMD-SHELL or NONE`);
    for (const port of s.ports ?? []) if (!/^(\d+(\.\d+){3}:)?\d+(-\d+)?:\d+(-\d+)?(\/(tcp|udp))?$/.test(String(port))) p.push(`${at}.ports: ${port}`);
  }
  return p;
}

/** StreamSpace's wiring: secrets only where they belong; the env file agreeing with the compose file. */
export function checkStreamSpace(doc: ComposeDoc, secrets: Record<string, string>, root = ROOT): string[] {
  const p: string[] = [];
  const s = doc.services ?? {};
  const need = ['postgres', 'redis', 'temporal', 'setup', 'agent-bootstrap', 'session-image', 'control-plane', 'worker', 'docker-agent'];
  for (const n of need) if (!s[n]) p.push(`no service ${n}`);
  if (p.length) return p;
  const envOf = Object.fromEntries(Object.entries(s).map(([n, svc]) => [n, serviceEnv(svc, root)]));
  const flat = (svc: Service) => JSON.stringify({ environment: svc.environment, command: svc.command });
  for (const [name, holders] of Object.entries(SECRETS))
    for (const [svcName, svc] of Object.entries(s))
      if (flat(svc).includes(secrets[name]) !== holders.includes(svcName))
        p.push(holders.includes(svcName) ? `${svcName} does not get ${name}` : `${svcName} gets ${name}, which only ${holders.join(', ')} may hold`);
  const cp = envOf['control-plane'];
  if (cp.STREAMSPACE_DEV_MODE === 'true') p.push('STREAMSPACE_DEV_MODE=true in the compose stack');
  if (cp.HOST !== '0.0.0.0') p.push(`control-plane: HOST=${cp.HOST}, not 0.0.0.0 (the published ports would not reach it)`);
  const pgEnv = envOf.postgres;
  if (cp.DB_USER !== pgEnv.POSTGRES_USER || cp.DB_NAME !== pgEnv.POSTGRES_DB)
    p.push(`DB_USER/DB_NAME (${cp.DB_USER}/${cp.DB_NAME}) differ from postgres' ${pgEnv.POSTGRES_USER}/${pgEnv.POSTGRES_DB}`);
  if (cp.DB_HOST !== 'postgres') p.push(`DB_HOST=${cp.DB_HOST}, not the postgres service`);
  const temporalHost = (cp.TEMPORAL_ADDRESS ?? '').split(':')[0];
  if (!s[temporalHost]) p.push(`TEMPORAL_ADDRESS=${cp.TEMPORAL_ADDRESS} names no service`);
  if (!String(s.temporal.image).startsWith('temporalio/auto-setup:')) p.push('temporal: not the auto-setup image (PostgreSQL persistence)');
  const redisUrl = cp.REDIS_URL ?? '';
  if (!redisUrl.startsWith(`redis://:${secrets.REDIS_PASSWORD}@redis:`)) p.push('control-plane: REDIS_URL does not carry REDIS_PASSWORD to the redis service');
  const agent = envOf['docker-agent'];
  const cpUrl = new URL(agent.CONTROL_PLANE_URL ?? 'ws://invalid');
  if (cpUrl.hostname !== 'control-plane' || cpUrl.port !== cp.AGENT_WS_PORT)
    p.push(`CONTROL_PLANE_URL=${agent.CONTROL_PLANE_URL} is not the control-plane's AGENT_WS_PORT ${cp.AGENT_WS_PORT}`);
  if (s['session-image'].image !== cp.DEFAULT_SESSION_IMAGE)
    p.push(`DEFAULT_SESSION_IMAGE=${cp.DEFAULT_SESSION_IMAGE} is not what session-image builds (${s['session-image'].image})`);
  const sessionsNet = doc.networks?.sessions?.name;
  if (!sessionsNet || agent.DOCKER_NETWORK !== sessionsNet) p.push(`DOCKER_NETWORK=${agent.DOCKER_NETWORK} is not the sessions network (${sessionsNet})`);
  const agentNets = Array.isArray(s['docker-agent'].networks) ? s['docker-agent'].networks : Object.keys(s['docker-agent'].networks ?? {});
  if (!agentNets.includes('sessions')) p.push('docker-agent is not on the sessions network');
  if (!(s['docker-agent'].volumes ?? []).some((v) => v.startsWith('/var/run/docker.sock:'))) p.push('docker-agent has no Docker socket');
  const tokenDir = path.posix.dirname(agent.AGENT_TOKEN_FILE ?? '');
  for (const n of ['agent-bootstrap', 'docker-agent'])
    if (!(s[n].volumes ?? []).some((v) => v.split(':')[1] === tokenDir)) p.push(`${n} does not mount the token volume at ${tokenDir}`);
  if (envOf['agent-bootstrap'].AGENT_TOKEN_FILE !== agent.AGENT_TOKEN_FILE) p.push('agent-bootstrap and docker-agent disagree on AGENT_TOKEN_FILE');
  const cmd = (n: string) => [s[n].command ?? []].flat().join(' ');
  if (!/dist\/db\/cli\.js up/.test(cmd('setup')) || !/dist\/db\/temporal-setup\.js/.test(cmd('setup')))
    p.push('setup does not run the schema migrations and temporal-setup');
  if (!/dist\/api\/auth\/agent-token-cli\.js/.test(cmd('agent-bootstrap'))) p.push('agent-bootstrap does not mint with agent-token-cli');
  for (const n of ['control-plane', 'worker', 'agent-bootstrap'])
    if ((s[n].depends_on as Record<string, { condition?: string }>)?.setup?.condition !== 'service_completed_successfully')
      p.push(`${n} does not wait for setup to complete`);
  return p;
}

/** `docker compose` (v2) or `docker-compose` (v1), whichever is installed; null: neither. */
export function composeCli(): { argv: string[]; version: string } | null {
  for (const argv of [['docker', 'compose'], ['docker-compose']]) {
    const r = spawnSync(argv[0], [...argv.slice(1), 'version', '--short'], { encoding: 'utf8' });
    if (r.status === 0 && r.stdout.trim()) return { argv, version: r.stdout.trim() };
  }
  return null;
}

/** Runs `<compose> -f docker-compose.yml config -q` with exactly `vars` as the interpolation environment. */
export function composeConfig(cli: { argv: string[] }, vars: Record<string, string>): { ok: boolean; output: string } {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME, ...vars };
  // No ./.env may feed it: --env-file points at an empty file (Compose v1 wants a regular file).
  const dir = mkdtempSync(path.join(os.tmpdir(), 'compose-check-'));
  const empty = path.join(dir, 'empty.env');
  writeFileSync(empty, '');
  try {
    const r = spawnSync(cli.argv[0], [...cli.argv.slice(1), '--project-directory', ROOT, '--env-file', empty, '-f', COMPOSE_FILE, 'config', '-q'], {
      env,
      encoding: 'utf8',
    });
    return { ok: r.status === 0, output: `${r.stdout}${r.stderr}`.trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Everything `npm run compose:check` checks; the lines it prints, and whether it all passed. */
export function runChecks(): { ok: boolean; lines: string[] } {
  const lines: string[] = [];
  let ok = true;
  const fail = (l: string) => {
    ok = false;
    lines.push(`FAIL ${l}`);
  };
  const secrets = placeholderSecrets();
  const { doc, missing } = loadCompose(secrets);
  for (const m of missing) fail(`unexpected required variable: ${m}`);
  for (const pr of [...checkCompose(doc), ...checkStreamSpace(doc, secrets)]) fail(pr);
  const without = loadCompose({}).missing.map((m) => m.split(':')[0]);
  for (const name of Object.keys(SECRETS)) if (!without.includes(name)) fail(`${name} is not required (\${${name}:?...})`);
  lines.push(`${ok ? 'ok  ' : 'FAIL'} built-in check: ${Object.keys(doc.services).length} services, secrets required: ${Object.keys(SECRETS).join(', ')}`);
  const cli = composeCli();
  if (!cli) lines.push('note no `docker compose` / `docker-compose` here: built-in check only');
  else {
    const name = `${cli.argv.join(' ')} ${cli.version}`;
    const good = composeConfig(cli, secrets);
    if (good.ok) lines.push(`ok   ${name} config -q`);
    else fail(`${name} config -q: ${good.output}`);
    const bad = composeConfig(cli, {});
    if (bad.ok) fail(`${name} config -q accepted the file with no secrets set`);
    else lines.push(`ok   ${name} refuses to run without the secrets (${bad.output.split('\n')[0]})`);
  }
  return { ok, lines };
}

if (require.main === module) {
  const { ok, lines } = runChecks();
  for (const l of lines) process.stdout.write(`compose:check: ${l}\n`);
  process.exit(ok ? 0 : 1);
}
