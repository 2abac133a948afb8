/**
 * Issue 10 on a real kube-apiserver (+ etcd): leader election enforces RENEW_DEADLINE with request
 * timeouts. Replica A reaches the API server through a TCP proxy on 127.0.0.1 that the test can
 * freeze: it stops forwarding bytes but keeps every socket open, so A's Lease requests hang (no
 * error, no reset) — the failure a plain "connection refused" test never shows. Replica B talks to
 * the API server directly. After the freeze A must stop leading within RENEW_DEADLINE of its last
 * renew, B must take over only after the lease expired by its own observation, and A must never act
 * as leader again (its logs, its /ready state and the Lease agree).
 *
 * K8S_AGENT_DIST (default dist/) runs the agents from another build, e.g. a deliberately broken
 * leader.ts compiled into test-artifacts/dist-broken to watch this test fail.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { KubeCluster, loadKubeClient, startKube } from './harness/kube';
import { freePort, Proc, ROOT, sleep, Stack, waitFor } from './harness/stack';

jest.setTimeout(600_000);

const k8s = loadKubeClient();
const NS = 'streamspace';
const SA_USER = 'system:serviceaccount:streamspace:streamspace-agent';
const AGENT_ID = 'k8s-lease-test';
const LEASE_NAME = 'k8s-agent-leader';
const LEASE_DURATION = 4000;
const RENEW_DEADLINE = 3000;
const RETRY_PERIOD = 1000;
const LEASE = { LEASE_DURATION: '4s', RENEW_DEADLINE: '3s', RETRY_PERIOD: '1s' };
/** Timer, logging and scheduling slack allowed on top of RENEW_DEADLINE. */
const MARGIN = 750;
const AGENT_SCRIPT = path.relative(path.join(ROOT, 'dist'), path.resolve(ROOT, process.env.K8S_AGENT_DIST ?? 'dist', 'agents/kubernetes/main.js'));

/**
 * A TCP proxy on 127.0.0.1 that can be frozen: while frozen it accepts connections and keeps all
 * sockets open but forwards no bytes in either direction (they are held, and dropped with their
 * connection), so requests through it hang exactly like a black-holed network path.
 */
class FreezableProxy {
  private server: net.Server | null = null;
  private frozen = false;
  private readonly conns = new Set<{ client: net.Socket; upstream: net.Socket; held: [net.Socket, Buffer][] }>();
  port = 0;

  constructor(private readonly targetPort: number) {}

  async start(): Promise<this> {
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      const conn = { client, upstream, held: [] as [net.Socket, Buffer][] };
      this.conns.add(conn);
      const forward = (to: net.Socket) => (d: Buffer) => {
        if (this.frozen) conn.held.push([to, d]);
        else to.write(d);
      };
      client.on('data', forward(upstream));
      upstream.on('data', forward(client));
      const close = () => {
        this.conns.delete(conn);
        client.destroy();
        upstream.destroy();
      };
      for (const s of [client, upstream]) {
        s.setNoDelay(true);
        s.on('error', close);
        s.on('close', close);
      }
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }

  get openConnections(): number {
    return this.conns.size;
  }

  freeze(): void {
    this.frozen = true;
  }

  thaw(): void {
    this.frozen = false;
    for (const c of this.conns) for (const [to, d] of c.held.splice(0)) if (!to.destroyed) to.write(d);
  }

  async stop(): Promise<void> {
    for (const c of this.conns) {
      c.client.destroy();
      c.upstream.destroy();
    }
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

/** A log line's own timestamp: JSON lines ({"time":"…"}) or the plain "<ISO> LEVEL: …" shape. */
function lineTime(line: string): number | null {
  if (line.startsWith('{')) {
    try {
      const t = (JSON.parse(line) as { time?: string | number }).time;
      return t === undefined ? null : typeof t === 'number' ? t : Date.parse(t);
    } catch {
      return null;
    }
  }
  const m = /^(\d{4}-\d\d-\d\dT[\d:.]+Z) /.exec(line);
  return m ? Date.parse(m[1]) : null;
}
/** Log lines matching re that the process wrote at or after `since` (wall-clock ms, by their own timestamps). */
const linesSince = (output: string, re: RegExp, since: number) =>
  output.split('\n').filter((line) => {
    const t = lineTime(line);
    return t !== null && t >= since && re.test(line);
  });
/** Wall-clock ms of the first log line at or after `since` matching re. */
const logTime = (output: string, re: RegExp, since = 0): number | null => {
  const line = linesSince(output, re, since)[0];
  return line === undefined ? null : lineTime(line);
};

interface Sample {
  sent: number;
  leader: boolean;
}

describe('Leader election enforces RENEW_DEADLINE with request timeouts (real API server)', () => {
  let cluster: KubeCluster;
  const stack = new Stack('leader-election');
  let proxy: FreezableProxy;
  let agentKc: import('@kubernetes/client-node').KubeConfig;
  let directKubeconfig: string;
  let proxiedKubeconfig: string;
  const procs: Proc[] = [];
  /** Set while the leader-state sampler runs; afterAll ends it even when a test fails. */
  let sampling = false;

  const holder = () =>
    agentKc
      .makeApiClient(k8s.CoordinationV1Api)
      .readNamespacedLease({ name: LEASE_NAME, namespace: NS })
      .then(
        (l) => l.spec?.holderIdentity ?? '',
        () => '',
      );

  const startReplica = (name: string, kubeconfig: string, healthPort: number, env: NodeJS.ProcessEnv = {}) => {
    const p = stack.startAgentProcess(name, AGENT_SCRIPT, {
      AGENT_ID,
      AGENT_TOKEN: stack.agentToken(AGENT_ID),
      CONTROL_PLANE_URL: `ws://127.0.0.1:${stack.agentPort}`,
      PLATFORM: 'kubernetes',
      NAMESPACE: NS,
      KUBECONFIG: kubeconfig,
      ENABLE_HA: 'true',
      LEASE_LOCK_NAME: LEASE_NAME,
      LEASE_LOCK_NAMESPACE: NS,
      POD_NAME: name,
      HEALTH_HOST: '127.0.0.1',
      HEALTH_PORT: String(healthPort),
      ...LEASE,
      ...env,
    });
    procs.push(p);
    return p;
  };

  const readyLeader = async (port: number): Promise<boolean | null> => {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/ready`, { signal: AbortSignal.timeout(500) });
      return ((await r.json()) as { leader?: boolean }).leader === true;
    } catch {
      return null;
    }
  };

  beforeAll(async () => {
    cluster = await startKube({ tokens: [{ user: SA_USER, groups: ['system:serviceaccounts', 'system:serviceaccounts:streamspace'] }] });
    const adminKc = new k8s.KubeConfig();
    adminKc.loadFromString(cluster.kubeconfig());
    await adminKc.makeApiClient(k8s.CoreV1Api).createNamespace({ body: { metadata: { name: NS } } });
    // The agent's RBAC from our manifests: the replicas run as its ServiceAccount.
    const objectsApi = k8s.KubernetesObjectApi.makeApiClient(adminKc);
    const manifests = k8s.loadAllYaml(readFileSync(path.join(ROOT, 'deploy/kubernetes/k8s-agent.yaml'), 'utf8')) as any[];
    for (const m of manifests.filter((x) => x.kind !== 'Deployment' && (!x.metadata?.namespace || x.metadata.namespace === NS))) await objectsApi.create(m);

    const saKubeconfig = cluster.kubeconfig(cluster.tokens[SA_USER]);
    agentKc = new k8s.KubeConfig();
    agentKc.loadFromString(saKubeconfig);
    proxy = await new FreezableProxy(Number(new URL(cluster.server).port)).start();
    directKubeconfig = path.join(stack.logDir, 'kubeconfig-direct.yaml');
    proxiedKubeconfig = path.join(stack.logDir, 'kubeconfig-proxied.yaml');
    writeFileSync(directKubeconfig, saKubeconfig);
    // Same CA and token; 127.0.0.1 is in the serving certificate, so TLS verifies through the proxy.
    writeFileSync(proxiedKubeconfig, saKubeconfig.replace(`server: ${cluster.server}`, `server: https://127.0.0.1:${proxy.port}`));
    await stack.start({ worker: false });
  });

  afterAll(async () => {
    sampling = false;
    await stack.stop();
    await proxy?.stop();
    await cluster?.stop();
  });

  test('RENEW_DEADLINE must be shorter than LEASE_DURATION: a replica refuses to start otherwise', async () => {
    const bad = startReplica('k8s-agent-bad', directKubeconfig, await freePort(), { LEASE_DURATION: '3s', RENEW_DEADLINE: '3s' });
    const code = await new Promise<number | null>((resolve) => bad.child!.once('exit', (c) => resolve(c)));
    expect(code).not.toBe(0);
    expect(bad.output).toMatch(/RENEW_DEADLINE \(3000 ms\) must be shorter than LEASE_DURATION \(3000 ms\)/);
    expect(bad.output).not.toMatch(/Attempting to acquire leader lease/);
    expect(await holder()).toBe('');
  });

  test('a leader whose Lease requests hang steps down within RENEW_DEADLINE; the follower takes over only after the lease expired', async () => {
    // A (through the proxy) leads first; B (direct) follows.
    const aHealth = await freePort();
    const bHealth = await freePort();
    const a = startReplica('k8s-agent-a', proxiedKubeconfig, aHealth);
    await waitFor('A to lead', async () => /This agent is the LEADER/.test(a.output), 30_000);
    await waitFor('A registered with the control plane', async () => /registered successfully/.test(a.output), 30_000);
    const b = startReplica('k8s-agent-b', directKubeconfig, bHealth);
    await waitFor('B to follow A', async () => /This agent is a FOLLOWER \(leader: k8s-agent-a_/.test(b.output), 30_000);
    expect((await holder()).startsWith('k8s-agent-a_')).toBe(true);
    // Readiness means "able to lead": the follower is Ready too (a rolling update must not wait on it).
    expect((await fetch(`http://127.0.0.1:${bHealth}/ready`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${aHealth}/ready`)).status).toBe(200);

    // Record both replicas' leader state (their /ready) every 50 ms for the rest of the test.
    const samples: Record<'a' | 'b', Sample[]> = { a: [], b: [] };
    sampling = true;
    const sampler = (async () => {
      while (sampling) {
        for (const [k, port] of [
          ['a', aHealth],
          ['b', bHealth],
        ] as const) {
          const sent = Date.now();
          const leader = await readyLeader(port);
          if (leader !== null) samples[k].push({ sent, leader });
        }
        await sleep(50);
      }
    })();

    await sleep(2 * RETRY_PERIOD); // a few healthy renewals through the proxy
    expect(proxy.openConnections).toBeGreaterThan(0);
    const frozenAt = Date.now();
    proxy.freeze();

    // A steps down on its own deadline although no request ever fails or returns.
    await waitFor('A to log that it stopped leading', async () => logTime(a.output, /Lost leadership: stopped leading/, frozenAt), RENEW_DEADLINE + 10_000, 20);
    const aStoppedAt = logTime(a.output, /Lost leadership: stopped leading/, frozenAt)!;
    const stepDownMs = aStoppedAt - frozenAt;
    console.log(`leader stepped down ${stepDownMs} ms after its API path froze (RENEW_DEADLINE ${RENEW_DEADLINE} ms)`);
    expect(stepDownMs).toBeLessThanOrEqual(RENEW_DEADLINE + MARGIN);
    // ...and not before its last renew was RENEW_DEADLINE old (it renewed at most a retry period before the freeze).
    expect(stepDownMs).toBeGreaterThanOrEqual(RENEW_DEADLINE - RETRY_PERIOD - MARGIN);
    expect(linesSince(a.output, /Lost leadership: stopped leading/, frozenAt).join('\n')).toMatch(/could not renew within RENEW_DEADLINE/);

    // B takes over, but only once the lease it last saw renewed has expired.
    await waitFor('B to lead', async () => logTime(b.output, /This agent is the LEADER/, frozenAt), LEASE_DURATION + 4 * RETRY_PERIOD + 10_000, 20);
    const bLeadsAt = logTime(b.output, /This agent is the LEADER/, frozenAt)!;
    console.log(`follower took over ${bLeadsAt - frozenAt} ms after the freeze (LEASE_DURATION ${LEASE_DURATION} ms)`);
    expect(bLeadsAt).toBeGreaterThan(aStoppedAt);
    // A renewed at most one retry period (+ one request) before the freeze, B saw that renew no earlier.
    expect(bLeadsAt - frozenAt).toBeGreaterThanOrEqual(LEASE_DURATION - 2 * RETRY_PERIOD);
    expect(bLeadsAt - frozenAt).toBeLessThanOrEqual(LEASE_DURATION + 3 * RETRY_PERIOD + MARGIN);
    expect((await holder()).startsWith('k8s-agent-b_')).toBe(true);
    await waitFor('B registered with the control plane', async () => logTime(b.output, /registered successfully/, frozenAt), 30_000);

    // The hung requests were cut off by their own timeouts (at most RETRY_PERIOD), not left waiting.
    const timeouts = linesSince(a.output, /lease update failed/, frozenAt).filter((l) => /timed out after \d+ ms/.test(l));
    expect(timeouts.length).toBeGreaterThan(0);
    for (const l of timeouts) expect(Number(/timed out after (\d+) ms/.exec(l)![1])).toBeLessThanOrEqual(RETRY_PERIOD);

    // Keep A frozen a while longer, then restore its path: it must come back as a follower.
    await sleep(2 * LEASE_DURATION);
    proxy.thaw();
    const thawedAt = Date.now();
    await waitFor('A to name B as leader after the thaw', async () => /This agent is a FOLLOWER \(leader: k8s-agent-b_/.test(a.output), 30_000);
    await sleep(3 * RETRY_PERIOD);
    sampling = false;
    await sampler;
    expect((await holder()).startsWith('k8s-agent-b_')).toBe(true);

    // A never acted as leader after its deadline: no LEADER line, no control-plane registration, no
    // leader:true on /ready after it stepped down (a sample's state is from after it was sent).
    expect(linesSince(a.output, /This agent is the LEADER|Successfully acquired leader lease|registered successfully/, aStoppedAt)).toEqual([]);
    const aLate = samples.a.filter((s) => s.leader && s.sent > frozenAt + RENEW_DEADLINE + MARGIN);
    expect(aLate).toEqual([]);
    expect(samples.a.some((s) => s.leader && s.sent < frozenAt)).toBe(true); // the sampler did see A leading
    expect(samples.a.filter((s) => s.sent > aStoppedAt + 100).length).toBeGreaterThan(20);
    // B led from its take-over to the end, and never before A had stepped down.
    expect(samples.b.filter((s) => s.leader && s.sent < aStoppedAt)).toEqual([]);
    expect(samples.b.filter((s) => s.sent > thawedAt).every((s) => s.leader)).toBe(true);
    expect(linesSince(b.output, /Lost leadership/, 0)).toEqual([]);
  });
});
