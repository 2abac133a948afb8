/**
 * Issue 13 item 1: Docker agent high availability (ENABLE_HA=true). Several agent processes with one
 * AGENT_ID elect a leader through a lease — HA_BACKEND=redis (the real Redis of scripts/services.sh)
 * or HA_BACKEND=file (replicas on one host) — on the real stack (gateway, worker, Temporal,
 * PostgreSQL). Most cases run the fake agent (dist/agents/fake/main.js: the same agents/common
 * runtime and HA code as the Docker agent, over a driver whose "engine" is a state file the replicas
 * share, and which logs every create/remove to an events file, one per replica here); one case runs
 * the real Docker agent with real containers.
 *
 * LEASE_DURATION=3s (RENEW_DEADLINE 2s, RETRY_PERIOD 400ms: the defaults' proportions).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import Redis from 'ioredis';
import WebSocket from 'ws';
import { AGENT_CONNECT_PATH, PROTOCOL_VERSION } from '../protocol/messages';
import { TEST_ENV } from './harness/env';
import { freePort, Proc, ROOT, sleep, Stack, waitFor } from './harness/stack';

jest.setTimeout(600_000);

const LEASE_MS = 3000;
const LEASE = { LEASE_DURATION: '3s' };

interface Replica {
  name: string;
  proc: Proc;
  healthPort: number;
  eventsFile: string;
}

interface FakeEvent {
  at: number;
  session: string;
  event: 'created' | 'removed' | 'hibernated' | 'woken';
}

const readEvents = (file: string): FakeEvent[] =>
  existsSync(file)
    ? readFileSync(file, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as FakeEvent)
    : [];

async function agentRow(stack: Stack, agentId: string): Promise<{ status: string; metadata: Record<string, any> } | undefined> {
  const r = await stack.pool.query('SELECT status, metadata FROM agents WHERE agent_id = $1', [agentId]);
  return r.rows[0];
}

/** The identity registered for agentId once it is online under one of `names` (and not `not`). */
async function registeredLeader(stack: Stack, agentId: string, names: string[], not?: string, timeoutMs = 30_000, everyMs = 20): Promise<string> {
  return waitFor(
    `a registered leader of ${agentId}${not ? ` other than ${not}` : ''}`,
    async () => {
      const row = await agentRow(stack, agentId);
      const id = row?.metadata?.identity as string | undefined;
      return row?.status === 'online' && id && names.includes(id) && id !== not ? id : undefined;
    },
    timeoutMs,
    everyMs,
  );
}

async function leaderGauge(r: Replica, agentId: string): Promise<number | null> {
  const text = await (await fetch(`http://127.0.0.1:${r.healthPort}/metrics`)).text();
  const m = new RegExp(`^streamspace_agent_leader_status\\{agent_id="${agentId}"\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : null;
}

describe('Docker agent HA (ENABLE_HA=true) on the real stack', () => {
  const stack = new Stack('docker-agent-ha');
  const redis = new Redis(TEST_ENV.redisUrl, { lazyConnect: true });
  let admin: string;
  const all: Replica[] = [];

  async function startReplica(agentId: string, name: string, env: NodeJS.ProcessEnv, script = 'agents/fake/main.js'): Promise<Replica> {
    const healthPort = await freePort();
    const eventsFile = path.join(stack.logDir, `events-${name}.jsonl`);
    const base = path.join(stack.logDir, `state-${agentId}`);
    mkdirSync(base, { recursive: true });
    const proc = stack.startAgentProcess(name, script, {
      AGENT_ID: agentId,
      AGENT_TOKEN: stack.agentToken(agentId),
      CONTROL_PLANE_URL: `ws://127.0.0.1:${stack.agentPort}`,
      PLATFORM: 'docker',
      REGION: 'local',
      AGENT_STREAM_HOSTS: '127.0.0.1',
      HEALTH_PORT: String(healthPort),
      HEALTH_HOST: '127.0.0.1',
      MAX_SESSIONS: '50',
      FAKE_START_DELAY: '20ms',
      // One state directory for the group (file lease, per-replica journals below it), one "engine".
      AGENT_STATE_DIR: base,
      FAKE_STATE_FILE: path.join(base, 'engine.json'),
      FAKE_EVENTS_FILE: eventsFile,
      ENABLE_HA: 'true',
      REDIS_URL: TEST_ENV.redisUrl,
      HA_IDENTITY: name,
      ...LEASE,
      ...env,
    });
    const r = { name, proc, healthPort, eventsFile };
    all.push(r);
    await proc.waitForLog(/Attempting to acquire leader lease/);
    return r;
  }

  const byName = (group: Replica[], name: string) => group.find((r) => r.name === name)!;
  const create = async (): Promise<string> => {
    const r = await stack.call('POST', '/api/v1/sessions', { user: 'alice', template: 'terminal', platform: 'docker', state: 'running' }, admin);
    expect(r.status).toBe(201);
    await stack.waitForState(admin, r.body.id, 'running', 60_000);
    return r.body.id;
  };
  const hibernateAndWake = async (id: string) => {
    const hib = await stack.call('POST', `/api/v1/sessions/${id}/hibernate?wait=30`, undefined, admin);
    expect({ status: hib.status, state: hib.body.state }).toEqual({ status: 200, state: 'hibernated' });
    const hibernatedAt = Date.now();
    const wake = await stack.call('POST', `/api/v1/sessions/${id}/wake?wait=30`, undefined, admin);
    expect({ status: wake.status, state: wake.body.state }).toEqual({ status: 200, state: 'running' });
    return hibernatedAt;
  };
  const stopGroup = async (group: Replica[]) => {
    for (const r of group) await r.proc.kill('SIGTERM');
  };

  beforeAll(async () => {
    await stack.start();
    await redis.connect();
    admin = await stack.login();
  });
  afterAll(async () => {
    for (const r of all) await r.proc.kill('SIGKILL');
    for (const c of await stack.docker.listContainers({ all: true, filters: { label: [`io.streamspace.agent-id=docker-ha-${stack.id}`] } }))
      await stack.docker
        .getContainer(c.Id)
        .remove({ force: true })
        .catch(() => undefined);
    const keys = await redis.keys(`lease:docker-agent-leader:*${stack.id}*`).catch(() => [] as string[]);
    if (keys.length) await redis.del(...keys);
    redis.disconnect();
    await stack.stop();
  });

  describe('HA_BACKEND=redis (fake agents)', () => {
    const AGENT = `fake-ha-${stack.id}`;
    const names = ['redis-r1', 'redis-r2', 'redis-r3', 'redis-r4'];
    const group: Replica[] = [];
    let sessionId = '';
    let leader = '';

    test('three replicas: one leads (lease key per agent id, fencing token registered), the others follow and log who leads', async () => {
      for (const n of names.slice(0, 3)) group.push(await startReplica(AGENT, n, { HA_BACKEND: 'redis' }));
      leader = await registeredLeader(stack, AGENT, names);
      const L = byName(group, leader);
      expect(L.proc.output).toMatch(/Successfully acquired leader lease via Redis/);
      expect(L.proc.output).toMatch(/This agent is the LEADER/);
      const followers = group.filter((r) => r.name !== leader);
      for (const f of followers) {
        await waitFor(`${f.name} logs the leader`, async () => f.proc.output.includes(`This agent is a FOLLOWER (leader: ${leader})`), 10_000);
        expect(f.proc.output).not.toMatch(/This agent is the LEADER/);
        // Followers hold no control-plane connection.
        expect(f.proc.output).not.toMatch(/registered successfully/);
      }
      // Once per leader change, not once per retry.
      await sleep(1500);
      for (const f of followers) expect(f.proc.output.split('This agent is a FOLLOWER').length - 1).toBe(1);
      // The gauge: 1 on the leader, 0 on followers.
      expect(await leaderGauge(L, AGENT)).toBe(1);
      for (const f of followers) expect(await leaderGauge(f, AGENT)).toBe(0);
      // The spec's key, per agent id, holding the leader and its fencing token; the gateway has the same token.
      const value = JSON.parse((await redis.get(`lease:docker-agent-leader:${AGENT}`))!);
      expect(value).toEqual(expect.objectContaining({ holder: leader, fencing_token: expect.any(Number), lease_duration_ms: LEASE_MS }));
      expect(Number(await redis.pttl(`lease:docker-agent-leader:${AGENT}`))).toBeGreaterThan(0);
      const row = await agentRow(stack, AGENT);
      expect(row!.metadata).toEqual(expect.objectContaining({ identity: leader, ha: true, ha_backend: 'redis', ha_fencing_token: value.fencing_token }));
      // /ready: the leader because it is registered, followers because they could take over.
      for (const r of group) expect((await fetch(`http://127.0.0.1:${r.healthPort}/ready`)).status).toBe(200);
      sessionId = await create();
    });

    test('kill -9 of the leader: a follower registers and the session is manageable within LEASE_DURATION + 2 s', async () => {
      const old = byName(group, leader);
      const t0 = Date.now();
      await old.proc.kill('SIGKILL');
      const next = await registeredLeader(stack, AGENT, names, leader, LEASE_MS + 5000);
      const registeredMs = Date.now() - t0;
      const hibernatedAt = await hibernateAndWake(sessionId);
      const manageableMs = hibernatedAt - t0;
      console.log(
        `redis, kill -9: new leader ${next} registered ${registeredMs} ms after the kill; the session hibernated ${manageableMs} ms after it (LEASE_DURATION ${LEASE_MS} ms)`,
      );
      expect(manageableMs).toBeLessThan(LEASE_MS + 2000);
      const remaining = group.filter((r) => r.name !== leader && r.name !== next);
      for (const f of remaining)
        await waitFor(`${f.name} logs the new leader`, async () => f.proc.output.includes(`This agent is a FOLLOWER (leader: ${next})`), 10_000);
      group.splice(group.indexOf(old), 1);
      leader = next;
    });

    test('SIGTERM of the leader: it releases the lease and a follower takes over in under 1 s', async () => {
      const old = byName(group, leader);
      const t0 = Date.now();
      const exited = old.proc.kill('SIGTERM');
      const next = await registeredLeader(stack, AGENT, names, leader, 10_000, 5);
      const handoverMs = Date.now() - t0;
      await exited;
      console.log(`redis, SIGTERM: ${next} registered ${handoverMs} ms after the signal`);
      // (its last lines may reach the pipe after its exit)
      await waitFor('the old leader logs the release', async () => /Released leader lease/.test(old.proc.output), 5000);
      expect(handoverMs).toBeLessThan(1000);
      group.splice(group.indexOf(old), 1);
      leader = next;
      await hibernateAndWake(sessionId);
    });

    test('a frozen leader (SIGSTOP past the lease) is fenced: after SIGCONT it steps down and does nothing to the engine', async () => {
      group.push(await startReplica(AGENT, 'redis-r4', { HA_BACKEND: 'redis' }));
      const L = byName(group, leader);
      const r4 = byName(group, 'redis-r4');
      await waitFor('the new replica follows', async () => r4.proc.output.includes(`This agent is a FOLLOWER (leader: ${leader})`), 10_000);
      const token0 = (await agentRow(stack, AGENT))!.metadata.ha_fencing_token as number;
      L.proc.signal('SIGSTOP');
      let thawed = false;
      try {
        // While it is frozen, a start lands in its socket: it would act on it when thawed.
        const created = await stack.call('POST', '/api/v1/sessions', { user: 'alice', template: 'terminal', platform: 'docker', state: 'running' }, admin);
        expect(created.status).toBe(201);
        const id = created.body.id;
        const next = await registeredLeader(stack, AGENT, names, leader, LEASE_MS + 5000);
        const takeoverAt = Date.now();
        expect(next).not.toBe(L.name);
        expect((await agentRow(stack, AGENT))!.metadata.ha_fencing_token).toBeGreaterThan(token0);
        await stack.waitForState(admin, id, 'running', 30_000);
        L.proc.signal('SIGCONT');
        thawed = true;
        await L.proc.waitForLog(/Lost leadership: stopped leading/, 10_000).catch(() => undefined);
        expect(L.proc.output).toMatch(/Lost leadership: stopped leading/);
        await waitFor('the thawed replica follows', async () => L.proc.output.includes(`This agent is a FOLLOWER (leader: ${next})`), 10_000);
        await sleep(1500);
        const late = readEvents(L.eventsFile).filter((e) => e.at >= takeoverAt - LEASE_MS);
        console.log(`redis, SIGSTOP: the thawed leader's driver events after the take-over: ${JSON.stringify(late)}`);
        expect(late.filter((e) => e.event === 'created' || e.event === 'removed')).toEqual([]);
        expect(readEvents(byName(group, next).eventsFile).filter((e) => e.session === id && e.event === 'created')).toHaveLength(1);
        // It did get the start (buffered in its socket while frozen) and its driver refused it.
        expect(L.proc.output).toMatch(new RegExp(`refused to start session ${id}`));
        expect(await leaderGauge(L, AGENT)).toBe(0);
        leader = next;
        await hibernateAndWake(id);
      } finally {
        if (!thawed) L.proc.signal('SIGCONT');
      }
    });

    test('the gateway refuses a registration with an older fencing token than the registered leader', async () => {
      const row = (await agentRow(stack, AGENT))!;
      const token = row.metadata.ha_fencing_token as number;
      const ws = new WebSocket(`ws://127.0.0.1:${stack.agentPort}${AGENT_CONNECT_PATH}`, { headers: { authorization: `Bearer ${stack.agentToken(AGENT)}` } });
      const frames: string[] = [];
      ws.on('message', (d) => frames.push(d.toString()));
      await new Promise((resolve, reject) => (ws.once('open', resolve), ws.once('error', reject)));
      const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
      ws.send(
        JSON.stringify({
          type: 'register',
          protocol_version: PROTOCOL_VERSION,
          agent_id: AGENT,
          platform: 'docker',
          region: 'local',
          cluster_id: null,
          capacity: { max_sessions: 50 },
          sessions: [],
          metadata: { identity: 'stale-replica', ha: true, ha_fencing_token: token - 1 },
        }),
      );
      expect(await closed).toBe(4409);
      expect(frames.join('\n')).toMatch(/a newer HA leader has registered/);
      const after = (await agentRow(stack, AGENT))!;
      expect({ status: after.status, identity: after.metadata.identity, token: after.metadata.ha_fencing_token }).toEqual({
        status: 'online',
        identity: leader,
        token,
      });
      await hibernateAndWake(sessionId);
    });

    afterAll(() => stopGroup(group));
  });

  describe('HA_BACKEND=file (fake agents, one host)', () => {
    const AGENT = `fake-hafile-${stack.id}`;
    const names = ['file-r1', 'file-r2', 'file-r3'];
    const group: Replica[] = [];
    let sessionId = '';
    let leader = '';

    test('one leader among three, via the lease file', async () => {
      for (const n of names) group.push(await startReplica(AGENT, n, { HA_BACKEND: 'file' }));
      leader = await registeredLeader(stack, AGENT, names);
      expect(byName(group, leader).proc.output).toMatch(/Successfully acquired leader lease via file/);
      for (const f of group.filter((r) => r.name !== leader))
        await waitFor(`${f.name} logs the leader`, async () => f.proc.output.includes(`This agent is a FOLLOWER (leader: ${leader})`), 10_000);
      const lease = JSON.parse(readFileSync(path.join(stack.logDir, `state-${AGENT}`, 'leader.lease'), 'utf8'));
      expect(lease).toEqual(expect.objectContaining({ holder: leader, fencing_token: expect.any(Number) }));
      sessionId = await create();
    });

    test('kill -9 of the leader: manageable within LEASE_DURATION + 2 s', async () => {
      const old = byName(group, leader);
      const t0 = Date.now();
      await old.proc.kill('SIGKILL');
      const next = await registeredLeader(stack, AGENT, names, leader, LEASE_MS + 5000);
      const registeredMs = Date.now() - t0;
      const hibernatedAt = await hibernateAndWake(sessionId);
      console.log(`file, kill -9: new leader ${next} registered ${registeredMs} ms after the kill; the session hibernated ${hibernatedAt - t0} ms after it`);
      expect(hibernatedAt - t0).toBeLessThan(LEASE_MS + 2000);
      group.splice(group.indexOf(old), 1);
      leader = next;
    });

    test('SIGTERM of the leader: hand-over in under 1 s', async () => {
      const old = byName(group, leader);
      const t0 = Date.now();
      const exited = old.proc.kill('SIGTERM');
      const next = await registeredLeader(stack, AGENT, names, leader, 10_000, 5);
      const handoverMs = Date.now() - t0;
      await exited;
      console.log(`file, SIGTERM: ${next} registered ${handoverMs} ms after the signal`);
      // (its last lines may reach the pipe after its exit)
      await waitFor('the old leader logs the release', async () => /Released leader lease/.test(old.proc.output), 5000);
      expect(handoverMs).toBeLessThan(1000);
      group.splice(group.indexOf(old), 1);
      await hibernateAndWake(sessionId);
    });

    afterAll(() => stopGroup(group));
  });

  describe('the real Docker agent (HA_BACKEND=redis, real containers)', () => {
    const AGENT = `docker-ha-${stack.id}`;
    const names = ['docker-r1', 'docker-r2'];
    const group: Replica[] = [];
    const dockerEnv = {
      HA_BACKEND: 'redis',
      DOCKER_NETWORK: 'host',
      NETWORK_PREFIX: `sst${stack.id}`,
      VNC_LISTEN: '127.0.0.1',
      VNC_PORT_RANGE: '15880-15889',
    };

    test('kill -9 of the leader: the follower registers and the container is hibernated and woken within LEASE_DURATION + 2 s', async () => {
      for (const n of names) group.push(await startReplica(AGENT, n, dockerEnv, 'agents/docker/main.js'));
      const leader = await registeredLeader(stack, AGENT, names);
      const L = byName(group, leader);
      expect(L.proc.output).toMatch(/Docker Agent starting \(HA mode: redis\)/);
      expect(L.proc.output).toMatch(/Successfully acquired leader lease via Redis/);
      const follower = group.find((r) => r.name !== leader)!;
      await waitFor('the follower logs the leader', async () => follower.proc.output.includes(`This agent is a FOLLOWER (leader: ${leader})`), 10_000);
      const id = await create();
      const t0 = Date.now();
      await L.proc.kill('SIGKILL');
      const next = await registeredLeader(stack, AGENT, names, leader, LEASE_MS + 5000);
      const registeredMs = Date.now() - t0;
      // Manageable: the new leader takes the hibernate (how long Docker then needs to stop the
      // container is the container's business, not fail-over's; printed too).
      const done = hibernateAndWake(id);
      await waitFor(
        'the hibernate acknowledged by the new leader',
        async () =>
          (
            await stack.pool.query(
              `SELECT 1 FROM agent_commands WHERE session_id = $1 AND command_type = 'hibernate_session' AND status IN ('ack', 'completed')`,
              [id],
            )
          ).rowCount,
        30_000,
        10,
      );
      const ackMs = Date.now() - t0;
      const hibernatedAt = await done;
      console.log(
        `docker agent, kill -9: ${next} registered ${registeredMs} ms after the kill, acknowledged the hibernate at ${ackMs} ms; the container was stopped ${hibernatedAt - t0} ms after the kill`,
      );
      expect(ackMs).toBeLessThan(LEASE_MS + 2000);
      const containers = await stack.docker.listContainers({ all: true, filters: { label: [`io.streamspace.session-id=${id}`] } });
      expect(containers.map((c) => c.State)).toEqual(['running']);
      const del = await stack.call('DELETE', `/api/v1/sessions/${id}?wait=30`, undefined, admin);
      expect(del.body.state).toBe('terminated');
    });

    afterAll(() => stopGroup(group));
  });

  test('HA_BACKEND=swarm refuses to start (exit 78) and says why', async () => {
    const child = spawn(process.execPath, [path.join(ROOT, 'dist/agents/docker/main.js')], {
      env: {
        ...process.env,
        ...stack.commonEnv,
        AGENT_ID: `docker-swarm-${stack.id}`,
        AGENT_TOKEN: 'x'.repeat(40),
        CONTROL_PLANE_URL: `ws://127.0.0.1:${stack.agentPort}`,
        PLATFORM: 'docker',
        HEALTH_PORT: '0',
        ENABLE_HA: 'true',
        HA_BACKEND: 'swarm',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d));
    child.stderr.on('data', (d: Buffer) => (out += d));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    expect(code).toBe(78);
    expect(out).toMatch(/HA_BACKEND=swarm is not offered: Docker Swarm has no lease primitive the agent could fence on/);
    expect(out).toMatch(/Use HA_BACKEND=redis .* or HA_BACKEND=file/);
    expect(out).not.toMatch(/Connected to Docker daemon/);
  });
});
