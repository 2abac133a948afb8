/**
 * Issue 11, item 7: the Docker agent installs as the spec's Step 4 shows. `npm run build:agent`
 * (scripts/build-agent-sea.sh) makes ONE executable file (Node single-executable application);
 * deploy/systemd/streamspace-docker-agent.service is the spec's unit with the credential added.
 *
 * This test builds the executable, copies it alone into an empty directory (no node_modules, no
 * Node), and starts it the way systemd would: an environment made of nothing but the unit's
 * Environment= lines and its EnvironmentFile= (docker-agent.env.example with a token minted through
 * POST /api/v1/agents/tokens). Only what points at this test machine is overridden: the control plane
 * address, the Docker network and VNC ports, the state directory and the health port. Not dev mode:
 * the agent runs with its production checks. It must register and run a real session.
 * systemd itself is not involved (the unit's hardening is not exercised here).
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, createWriteStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { rfbGreeting } from '../agents/docker/driver';
import { TEST_ENV } from './harness/env';
import { freePort, Proc, ROOT, sleep, Stack } from './harness/stack';

jest.setTimeout(300_000);

const UNIT_FILE = path.join(ROOT, 'deploy', 'systemd', 'streamspace-docker-agent.service');
const ENV_EXAMPLE = path.join(ROOT, 'deploy', 'systemd', 'docker-agent.env.example');
const BUILD_SCRIPT = path.join(ROOT, 'scripts', 'build-agent-sea.sh');
const EXECUTABLE = path.join(ROOT, 'dist', 'bin', 'streamspace-docker-agent');
/** What systemd puts into every service's environment before the unit's own variables. */
const SYSTEMD_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

// ---- systemd unit syntax (the parts this unit uses) ----

interface Unit {
  /** section → key → values in file order (a key may repeat). */
  sections: Map<string, Map<string, string[]>>;
}

/** Parses a unit file: sections, `#`/`;` comments, backslash line continuations, repeated keys. */
function parseUnit(text: string): Unit {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  const lines = text.replace(/\\\n/g, ' ').split('\n');
  for (const raw of lines) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1], current);
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 0 || !current) throw new Error(`unit file: cannot parse line "${line}"`);
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    current.set(key, [...(current.get(key) ?? []), value]);
  }
  return { sections };
}

/** Splits an Environment= value as systemd does: whitespace-separated words, "…" or '…' quoting, backslash escapes. */
function splitWords(value: string): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  let quote: string | null = null;
  for (let i = 0; i < value.length; i++) {
    const c = value[i];
    if (c === '\\' && i + 1 < value.length) {
      word += value[++i];
      inWord = true;
    } else if (quote) {
      if (c === quote) quote = null;
      else word += c;
    } else if (c === '"' || c === "'") {
      quote = c;
      inWord = true;
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
    } else {
      word += c;
      inWord = true;
    }
  }
  if (quote) throw new Error(`unterminated quote in "${value}"`);
  if (inWord) words.push(word);
  return words;
}

/** The variables of the unit's [Service] Environment= lines, later assignments winning. */
function unitEnvironment(unit: Unit): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of unit.sections.get('Service')?.get('Environment') ?? []) {
    for (const word of splitWords(line)) {
      const eq = word.indexOf('=');
      if (eq <= 0) throw new Error(`Environment=: "${word}" is not NAME=value`);
      env[word.slice(0, eq)] = word.slice(eq + 1);
    }
  }
  return env;
}

/** An EnvironmentFile= as systemd reads it: NAME=value lines, comments, optional quotes around the value. */
function parseEnvironmentFile(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(line);
    if (!m) throw new Error(`EnvironmentFile: cannot parse line "${line}"`);
    const v = m[2];
    env[m[1]] = /^"(.*)"$|^'(.*)'$/.test(v) ? v.slice(1, -1) : v;
  }
  return env;
}

// ---- the executable, started as systemd would ----

/** A Proc that runs the single executable itself (not node + a script), with exactly env (no inherited variables). */
class ExecutableProc extends Proc {
  constructor(
    name: string,
    readonly file: string,
    readonly cwd: string,
    env: NodeJS.ProcessEnv,
    logDir: string,
  ) {
    super(name, file, env, logDir);
  }

  override start(): this {
    const out = createWriteStream(path.join(this.logDir, `${this.name}.log`), { flags: 'a' });
    out.write(`--- start ${new Date().toISOString()} ${this.file}\n`);
    const child = spawn(this.file, [], { cwd: this.cwd, env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(out, { end: false });
    child.stderr!.pipe(out, { end: false });
    const keep = (d: Buffer) => {
      this.output = (this.output + d.toString()).slice(-1_000_000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    this.child = child;
    return this;
  }
}

function buildExecutable(): { ms: number; size: number; log: string } {
  const started = Date.now();
  const r = spawnSync('bash', [BUILD_SCRIPT], { cwd: ROOT, encoding: 'utf8', timeout: 240_000 });
  const log = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  if (r.error || r.status !== 0)
    throw new Error(`npm run build:agent (scripts/build-agent-sea.sh) failed (${r.error?.message ?? `exit ${r.status}`}):\n${log}`);
  if (!existsSync(EXECUTABLE)) throw new Error(`npm run build:agent succeeded but ${EXECUTABLE} is missing:\n${log}`);
  return { ms: Date.now() - started, size: statSync(EXECUTABLE).size, log };
}

describe('the Docker agent as one executable with the spec’s systemd unit', () => {
  const stack = new Stack('agent-sea');
  const unit = parseUnit(readFileSync(UNIT_FILE, 'utf8'));
  const service = unit.sections.get('Service') ?? new Map<string, string[]>();
  const one = (key: string): string | undefined => service.get(key)?.at(-1);
  const unitEnv = unitEnvironment(unit);
  const agentId = unitEnv.AGENT_ID;
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'streamspace-sea-'));
  /** Where the executable is installed for the test: an otherwise empty directory. */
  const installDir = path.join(tmp, 'bin');
  const installed = path.join(installDir, path.basename(one('ExecStart') ?? 'streamspace-docker-agent'));
  let admin: string;

  /**
   * The agent's environment as systemd builds it: its own variables, then Environment=, then
   * EnvironmentFile= (which overrides Environment=), then the test machine's overrides.
   */
  async function systemdEnv(envFile: string, overrides: Record<string, string> = {}): Promise<NodeJS.ProcessEnv> {
    return {
      PATH: SYSTEMD_PATH,
      HOME: tmp,
      USER: 'streamspace',
      LOGNAME: 'streamspace',
      STATE_DIRECTORY: path.join(tmp, 'state'),
      ...unitEnv,
      ...parseEnvironmentFile(readFileSync(envFile, 'utf8')),
      // Pointing the unit at this machine's test stack and keeping clear of other tests:
      CONTROL_PLANE_URL: `ws://127.0.0.1:${stack.agentPort}`,
      DOCKER_HOST: TEST_ENV.dockerHost,
      DOCKER_NETWORK: 'host', // scripts/services.sh's dockerd has no bridge: sessions use loopback ports
      NETWORK_PREFIX: `sst${stack.id}`, // stack.stop() removes this prefix's home volumes
      VNC_PORT_RANGE: '15850-15869',
      VNC_LISTEN: '127.0.0.1',
      AGENT_STATE_DIR: path.join(tmp, 'state'),
      HEALTH_PORT: String(await freePort()),
      ...overrides,
    };
  }

  /** The unit's EnvironmentFile= for this test: docker-agent.env.example, with the token filled in (mode 0600). */
  function writeEnvFile(name: string, token: string | null): string {
    const file = path.join(tmp, name);
    let text = readFileSync(ENV_EXAMPLE, 'utf8');
    if (token !== null) text = text.replace(/^AGENT_TOKEN=.*$/m, `AGENT_TOKEN=${token}`);
    writeFileSync(file, text, { mode: 0o600 });
    return file;
  }

  beforeAll(async () => {
    // Always rebuilt, so the executable under test is made from these sources; a failed build fails the test.
    const built = buildExecutable();
    process.stdout.write(`agent-sea: built ${EXECUTABLE} (${(built.size / 1024 / 1024).toFixed(1)} MiB) in ${built.ms} ms\n`);
    mkdirSync(installDir, { recursive: true });
    copyFileSync(EXECUTABLE, installed);
    await stack.start();
    admin = await stack.login();
  });
  afterAll(async () => {
    await stack.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('the unit is the spec’s Step 4 unit, with the credential from a root-only EnvironmentFile', () => {
    expect(unit.sections.get('Unit')?.get('Requires')).toEqual(['docker.service']);
    expect(one('ExecStart')).toBe('/usr/local/bin/streamspace-docker-agent');
    expect(one('User')).toBe('streamspace');
    expect(one('Group')).toBe('docker');
    expect(one('Restart')).toBe('always');
    expect(one('RestartSec')).toBe('10');
    expect(unit.sections.get('Install')?.get('WantedBy')).toEqual(['multi-user.target']);
    // The spec's variables (its HA ones aside: the Docker agent has no leader election).
    expect(unitEnv).toMatchObject({
      AGENT_ID: 'docker-host-01',
      CONTROL_PLANE_URL: 'wss://streamspace-v2.example.com',
      PLATFORM: 'docker',
      REGION: 'us-east-1',
    });
    expect(unitEnv.AGENT_TOKEN).toBeUndefined(); // never in the world-readable unit
    expect(service.get('EnvironmentFile')).toEqual(['/etc/streamspace/docker-agent.env']); // no "-": required
    expect(Object.keys(parseEnvironmentFile(readFileSync(ENV_EXAMPLE, 'utf8')))).toContain('AGENT_TOKEN');
    // The state directory systemd creates is the one the agent journals to.
    expect(unitEnv.AGENT_STATE_DIR).toBe(`/var/lib/${one('StateDirectory')}`);
    // The executable is one file with nothing beside it.
    expect(readdirSync(installDir)).toEqual([path.basename(installed)]);
  });

  test('without the credential the executable refuses to start, naming AGENT_TOKEN (exit 78)', async () => {
    const env = await systemdEnv(writeEnvFile('no-token.env', null));
    expect(env.AGENT_TOKEN).toBe('');
    const r = spawnSync(installed, [], { cwd: installDir, env, encoding: 'utf8', timeout: 30_000 });
    expect(r.error).toBeUndefined();
    expect(r.stderr).toMatch(/docker-agent: refusing to start: .*AGENT_TOKEN/);
    expect(r.status).toBe(78); // the unit's RestartPreventExitStatus=78: no restart loop
  });

  test('started with the unit’s environment it registers and runs a session on a real container', async () => {
    const minted = await stack.call('POST', '/api/v1/agents/tokens', { agent_id: agentId, description: 'agent-sea test' }, admin);
    expect(minted.status).toBe(201);
    const envFile = writeEnvFile('docker-agent.env', minted.body.token);
    expect(statSync(envFile).mode & 0o777).toBe(0o600);
    const env = await systemdEnv(envFile);
    expect(env.STREAMSPACE_DEV_MODE).toBeUndefined(); // production checks on

    const proc = new ExecutableProc(`agent-${agentId}`, installed, installDir, env, stack.logDir);
    stack.agents.set(agentId, proc); // stack.stop() stops it; stack.containers() finds its containers
    proc.start();
    await proc.waitForLog(/Agent registered successfully with Control Plane/, 30_000).catch(async (err: Error) => {
      await sleep(500); // the rest of what it printed before it exited
      throw new Error(`${err.message}\n--- the executable's output:\n${proc.output.slice(-3000)}`);
    });
    expect(proc.output).toMatch(/Docker Agent starting/);
    expect(proc.output).toMatch(new RegExp(`Agent ID: ${agentId}`));
    expect(proc.output).not.toMatch(/ExperimentalWarning|single executable/i); // disableExperimentalSEAWarning
    expect(proc.output).not.toMatch(/STREAMSPACE_DEV_MODE/);

    const ready = await fetch(`http://127.0.0.1:${env.HEALTH_PORT}/ready`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ status: 'ready', registered: true });

    const agents = await stack.call('GET', '/api/v1/agents', undefined, admin);
    expect(agents.body).toEqual([expect.objectContaining({ agent_id: agentId, status: 'online', platform: 'docker', region: 'us-east-1' })]);

    const created = await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker', state: 'running' }, admin);
    expect(created.status).toBe(201);
    const id: string = created.body.id;
    const running = await stack.waitForState(admin, id, 'running');
    expect(running.agent_id).toBe(agentId);
    const [container] = await stack.containers(id);
    expect(container).toBeDefined();
    expect(container.State).toBe('running');
    expect(container.Labels).toMatchObject({ 'io.streamspace.session-id': id, 'io.streamspace.agent-id': agentId, 'io.streamspace.template': 'terminal' });
    const port = Number(container.Labels['io.streamspace.vnc-port']);
    expect(port).toBeGreaterThanOrEqual(15850);
    expect(port).toBeLessThanOrEqual(15869);
    expect(await rfbGreeting({ host: '127.0.0.1', port }, 5000)).toBe('RFB 003.008\n');

    const del = await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin);
    expect(del.status).toBe(200);
    expect(del.body.state).toBe('terminated');
    expect(await stack.containers(id)).toHaveLength(0);
    const cmds = await stack.call('GET', `/api/v1/sessions/${id}/commands`, undefined, admin);
    expect(cmds.body.map((c: { command_type: string; status: string }) => `${c.command_type}:${c.status}`)).toEqual([
      'start_session:completed',
      'stop_session:completed',
    ]);
    // The agent journalled into the unit's state directory.
    expect(readdirSync(env.AGENT_STATE_DIR!).length).toBeGreaterThan(0);

    // systemctl stop: SIGTERM (the unit's KillSignal=), and the agent exits cleanly.
    const child = proc.child!;
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
