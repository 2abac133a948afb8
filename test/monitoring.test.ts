/**
 * Issue 13, item 4: alerts that fire. deploy/monitoring/alerts.yml passes `promtool check rules` and its unit
 * tests (`promtool test rules deploy/monitoring/tests/*.yml`: every alert fires in one case and stays quiet
 * in another); every metric the rules and the Grafana dashboard query is exported by a real process (the
 * gateway's /metrics, the worker's /metrics with the Temporal SDK's, an agent's /metrics); and every metric
 * the rules use moves on a real stack when the thing it measures happens (sessions created, hibernated,
 * stopped and refused for capacity; an agent killed; a command redelivered and one expired; VNC viewers
 * refused; Redis cut from the gateway; Temporal cut from a worker; a workflow task failing; Kubernetes agent
 * leadership moving between replicas on a real kube-apiserver).
 *
 * promtool comes from scripts/build-promtool.sh (PROMTOOL_BIN overrides); without it the test fails, never skips.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import YAML from 'yaml';
import { KubeCluster, loadKubeClient, startKube } from './harness/kube';
import { TEST_ENV } from './harness/env';
import { freePort, Proc, ROOT, sleep, Stack, waitFor } from './harness/stack';
import { openViewer } from './harness/viewer';

jest.setTimeout(600_000);

const PROMTOOL = process.env.PROMTOOL_BIN || '/var/cache/streamspace/bin/promtool';
const MONITORING = path.join(ROOT, 'deploy', 'monitoring');
const RULES = path.join(MONITORING, 'alerts.yml');
const RULE_TESTS = path.join(MONITORING, 'tests');
const DASHBOARD = path.join(MONITORING, 'grafana', 'streamspace.json');

/** Series no StreamSpace process exports: Prometheus' own `up`, and kube-state-metrics' (HighAPIReplicaFailure). */
const EXTERNAL = new Set(['up', 'kube_deployment_status_replicas_ready', 'kube_deployment_spec_replicas']);

function promtool(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(PROMTOOL, args, { cwd: MONITORING, encoding: 'utf8', timeout: 120_000 });
  if (r.error) throw r.error;
  return { status: r.status, out: `${r.stdout}\n${r.stderr}` };
}

// ---------------------------------------------------------------------------- PromQL metric names

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'offset', 'bool', 'inf', 'nan']);

/** The metric names a PromQL expression selects (not functions, keywords, labels, durations or variables). */
export function metricNames(expr: string): string[] {
  const s = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""') // strings
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // ranges
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // grouping label lists
    .replace(/\$\{?\w+\}?/g, ' '); // dashboard variables
  const names = new Set<string>();
  for (const m of s.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const after = s.slice(m.index! + m[0].length).trimStart();
    if (after.startsWith('(')) continue; // a function or aggregation
    if (PROMQL_WORDS.has(m[0].toLowerCase())) continue;
    const before = s.slice(0, m.index!);
    if (/[0-9.]$/.test(before)) continue; // 5m, 1e3
    names.add(m[0]);
  }
  return [...names];
}

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rules = (): Rule[] => (YAML.parse(readFileSync(RULES, 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap((g) => g.rules);
const dashboardExprs = (): string[] => {
  const d = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: { targets?: { expr: string }[] }[] };
  return d.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));
};

// ---------------------------------------------------------------------------- scrapes

/** One process's /metrics text, parsed: TYPE per metric family and samples. */
class Scrape {
  readonly types = new Map<string, string>();
  readonly samples: { name: string; labels: string; value: number }[] = [];
  constructor(readonly text: string) {
    for (const line of text.split('\n')) {
      const t = /^# TYPE (\S+) (\S+)/.exec(line);
      if (t) this.types.set(t[1], t[2]);
      const s = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{.*\})? (\S+)/.exec(line);
      if (s) this.samples.push({ name: s[1], labels: s[2] ?? '', value: Number(s[3]) });
    }
  }
  /** The family a series name belongs to (x_bucket / x_count / x_sum of histogram x). */
  family(name: string): string | undefined {
    if (this.types.has(name) || this.samples.some((s) => s.name === name)) return name;
    const m = /^(.*)_(bucket|count|sum)$/.exec(name);
    if (m && ['histogram', 'summary'].includes(this.types.get(m[1]) ?? '')) return m[1];
    return undefined;
  }
}

/** Sum of a metric's samples over all scrapes, optionally only series whose label text matches (histograms: their _count). */
function total(scrapes: Scrape[], name: string, labels?: RegExp): number {
  let sum = 0;
  for (const sc of scrapes) {
    const fam = sc.family(name) ?? name;
    const series = ['histogram', 'summary'].includes(sc.types.get(fam) ?? '') ? `${fam}_count` : name;
    for (const s of sc.samples) if (s.name === series && (!labels || labels.test(s.labels))) sum += s.value;
  }
  return sum;
}

const scrape = async (url: string): Promise<Scrape> => new Scrape(await (await fetch(url, { signal: AbortSignal.timeout(5000) })).text());

/** The metrics URL a worker logged ("Worker metrics at http://…/metrics"). */
const workerMetricsUrl = (p: Proc): string => {
  const url = /Worker metrics at (http:\/\/\S+?\/metrics)/.exec(p.output)?.[1];
  if (!url) throw new Error(`${p.name} did not log its metrics URL`);
  return url;
};

/**
 * A TCP proxy on 127.0.0.1 that can be cut: cut() destroys every open connection and refuses new ones
 * (connection reset) until mend(). Stands between a process and Redis or Temporal.
 */
class CuttableProxy {
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  private cutOff = false;
  port = 0;
  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}
  async start(): Promise<this> {
    this.server = net.createServer((client) => {
      if (this.cutOff) return void client.resetAndDestroy();
      const upstream = net.connect(this.targetPort, this.targetHost);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => (client.destroy(), upstream.destroy()));
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as net.AddressInfo).port;
    return this;
  }
  cut(): void {
    this.cutOff = true;
    for (const s of this.sockets) s.resetAndDestroy();
  }
  mend(): void {
    this.cutOff = false;
  }
  async stop(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}

// ---------------------------------------------------------------------------- promtool

describe('alert rules: promtool', () => {
  beforeAll(() => {
    if (!existsSync(PROMTOOL))
      throw new Error(`promtool not found at ${PROMTOOL}: run \`bash scripts/build-promtool.sh\` (scripts/provision.sh test does) or set PROMTOOL_BIN`);
  });

  test('promtool is the Prometheus release scripts/build-promtool.sh pins', () => {
    const pinned = /PROMETHEUS_MODULE:-v0\.(\d+)\.(\d+)/.exec(readFileSync(path.join(ROOT, 'scripts', 'build-promtool.sh'), 'utf8'))!;
    const release = `3.${Number(pinned[1]) - 300}.${pinned[2]}`; // module v0.316.0 is Prometheus 3.16.0
    expect(promtool('--version').out).toMatch(new RegExp(`promtool, version ${release.replace(/\./g, '\\.')}\\b`));
  });

  test('promtool check rules: alerts.yml is valid', () => {
    const r = promtool('check', 'rules', RULES);
    expect(r.out).toMatch(/SUCCESS: \d+ rules found/);
    expect(r.status).toBe(0);
  });

  test('promtool test rules: every unit test passes', () => {
    const files = readdirSync(RULE_TESTS).filter((f) => f.endsWith('.yml'));
    expect(files.length).toBeGreaterThan(0);
    const r = promtool('test', 'rules', ...files.map((f) => path.join(RULE_TESTS, f)));
    if (r.status !== 0) throw new Error(`promtool test rules failed:\n${r.out}`);
    expect(r.out).not.toMatch(/FAILED/);
  });

  test('every alert has a unit test where it fires and one where it does not; severity, summary, description, runbook, for', () => {
    const fires = new Set<string>();
    const quiet = new Set<string>();
    for (const f of readdirSync(RULE_TESTS).filter((x) => x.endsWith('.yml'))) {
      const doc = YAML.parse(readFileSync(path.join(RULE_TESTS, f), 'utf8')) as {
        tests: { alert_rule_test?: { alertname: string; exp_alerts?: unknown[] }[] }[];
      };
      for (const t of doc.tests) for (const a of t.alert_rule_test ?? []) (a.exp_alerts?.length ? fires : quiet).add(a.alertname);
    }
    const all = rules();
    expect(all.length).toBeGreaterThanOrEqual(17);
    for (const r of all) {
      expect([r.alert, fires.has(r.alert)]).toEqual([r.alert, true]);
      expect([r.alert, quiet.has(r.alert)]).toEqual([r.alert, true]);
      expect([r.alert, r.labels?.severity]).toEqual([r.alert, expect.stringMatching(/^(critical|warning)$/)]);
      expect(r.annotations).toEqual(
        expect.objectContaining({ summary: expect.any(String), description: expect.any(String), runbook: expect.stringMatching(/^docs\/MONITORING\.md#/) }),
      );
      expect(r.for).toBeDefined();
    }
    // The spec's alerts are all there, and the recommended Temporal worker ones.
    for (const name of ['AgentOffline', 'HighSessionFailureRate', 'VNCConnectionFailures', 'NoAgentLeader', 'RedisConnectionFailure', 'HighAPIReplicaFailure'])
      expect(all.map((r) => r.alert)).toContain(name);
    for (const name of [
      'TemporalWorkerNoPollers',
      'TemporalNonDeterminismError',
      'TemporalWorkflowTaskScheduleToStartHigh',
      'TemporalActivityScheduleToStartHigh',
    ])
      expect(all.map((r) => r.alert)).toContain(name);
    // The spec's NoAgentLeader bug stays fixed: followers at 0 are normal, no replica at all must fire.
    expect(all.find((r) => r.alert === 'NoAgentLeader')!.expr).toMatch(
      /max by \(agent_id\) \(streamspace_agent_leader_status\) == 0 or absent\(streamspace_agent_leader_status\)/,
    );
  });

  test('the runbook anchors exist in docs/MONITORING.md', () => {
    const doc = readFileSync(path.join(ROOT, 'docs', 'MONITORING.md'), 'utf8').toLowerCase();
    for (const r of rules()) expect([r.alert, doc.includes(`### ${r.alert.toLowerCase()}`)]).toEqual([r.alert, true]);
  });

  test('metricNames() reads PromQL the way the checks below need', () => {
    expect(
      metricNames(
        'sum by (le, platform) (rate(a_bucket{job=~"$j",x="y z"}[$__rate_interval])) / 1000 > 2 or absent(b) and on (job, instance) c{backend="redis"} == 1 unless d offset 15m',
      ).sort(),
    ).toEqual(['a_bucket', 'b', 'c', 'd']);
  });

  test('the Grafana dashboard parses and covers sessions, agents, commands, VNC tunnels and the worker', () => {
    const d = JSON.parse(readFileSync(DASHBOARD, 'utf8'));
    expect(d).toMatchObject({ title: 'StreamSpace', uid: 'streamspace-v2' });
    const used = new Set(dashboardExprs().flatMap(metricNames));
    for (const m of [
      'streamspace_sessions',
      'streamspace_session_start_seconds_bucket',
      'streamspace_session_failures_total',
      'streamspace_agent_status',
      'streamspace_agent_leader_status',
      'streamspace_command_round_trip_seconds_bucket',
      'streamspace_command_redeliveries_total',
      'streamspace_vnc_active_tunnels',
      'streamspace_vnc_bytes_total',
      'temporal_worker_task_slots_available',
      'temporal_workflow_task_schedule_to_start_latency_bucket',
      'temporal_activity_schedule_to_start_latency_bucket',
    ])
      expect([m, used.has(m)]).toEqual([m, true]);
    const ids = (d.panels as { id: number }[]).map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
  });
});

// ---------------------------------------------------------------------------- the real stack

describe('every metric the rules and the dashboard use exists and moves on a real stack', () => {
  const k8s = loadKubeClient();
  const NS = 'streamspace';
  const SA_USER = 'system:serviceaccount:streamspace:streamspace-agent';
  const K8S_AGENT = 'k8s-monitoring';
  const AGENT_A = 'mon-a';
  const AGENT_B = 'mon-b';
  let stack: Stack;
  let redisProxy: CuttableProxy;
  let temporalProxy: CuttableProxy;
  let cluster: KubeCluster | undefined;
  let admin: string;
  let extraWorker: Proc;
  const agentPorts = new Map<string, number>();
  const k8sReplicas: { proc: Proc; port: number }[] = [];
  /** Scrapes of every process, taken before anything happened, and at the end. */
  let before: Scrape[] = [];
  let after: Scrape[] = [];

  const create = () => stack.call('POST', '/api/v1/sessions', { user: 'alice', template: 'terminal', platform: 'docker' }, admin);
  const gatewayMetrics = () => scrape(`${stack.url}/metrics`);
  const startFake = async (id: string, env: NodeJS.ProcessEnv) => {
    if (!agentPorts.has(id)) agentPorts.set(id, await freePort());
    return stack.startFakeAgent(id, { HEALTH_PORT: String(agentPorts.get(id)), ...env });
  };
  const commandRows = async (sessionId: string) =>
    (
      await stack.pool.query<{ command_type: string; status: string }>(
        'SELECT command_type, status FROM agent_commands WHERE session_id = $1 ORDER BY created_at',
        [sessionId],
      )
    ).rows;

  /** Every process that is up: the gateway, both workers, the agents that run, the Kubernetes replicas. */
  async function scrapeAll(): Promise<Scrape[]> {
    const urls = [`${stack.url}/metrics`, workerMetricsUrl(stack.worker)];
    if (extraWorker) urls.push(workerMetricsUrl(extraWorker));
    for (const [id, port] of agentPorts) if (stack.agents.get(id)?.child) urls.push(`http://127.0.0.1:${port}/metrics`);
    for (const r of k8sReplicas) if (r.proc.child) urls.push(`http://127.0.0.1:${r.port}/metrics`);
    return Promise.all(urls.map(scrape));
  }

  beforeAll(async () => {
    if (!existsSync(PROMTOOL)) throw new Error(`promtool not found at ${PROMTOOL}: run \`bash scripts/build-promtool.sh\``);
    const redis = new URL(TEST_ENV.redisUrl);
    redisProxy = await new CuttableProxy(redis.hostname, Number(redis.port)).start();
    const [th, tp] = TEST_ENV.temporalAddress.split(':');
    temporalProxy = await new CuttableProxy(th, Number(tp)).start();
    const redisUrl = new URL(TEST_ENV.redisUrl);
    redisUrl.port = String(redisProxy.port);
    stack = new Stack('monitoring', {
      AGENT_HUB_BACKEND: 'redis',
      REDIS_URL: redisUrl.toString(),
      PLACEMENT_WHEN_FULL: 'fail',
      SESSION_START_TIMEOUT: '6s',
      AGENT_HEARTBEAT_TIMEOUT: '3s',
      AGENT_SWEEP_INTERVAL: '500ms',
      VNC_OPEN_TIMEOUT: '1500ms',
      WORKER_METRICS_PORT: '0',
    });
    await stack.start();
    admin = await stack.login();
    before = await scrapeAll();
  });

  afterAll(async () => {
    for (const r of k8sReplicas) await r.proc.kill('SIGTERM');
    await stack?.stop();
    await cluster?.stop();
    await redisProxy?.stop();
    await temporalProxy?.stop();
  });

  test('sessions: created, refused for capacity, hibernated, stopped; VNC viewers refused', async () => {
    await startFake(AGENT_A, { MAX_SESSIONS: '1' });
    const s1 = (await create()).body.id as string;
    await stack.waitForState(admin, s1, 'running');
    const g1 = await gatewayMetrics();
    expect(total([g1], 'streamspace_sessions', /state="running",platform="docker"/)).toBe(1);

    // The only agent is full and PLACEMENT_WHEN_FULL=fail: the start fails at once (no_capacity).
    const s2 = (await create()).body.id as string;
    const failed = await stack.waitForState(admin, s2, 'failed');
    expect(failed.error).toMatch(/no capacity/);

    // A viewer of a running session whose agent cannot open the stream (the fake agent's VNC port has no
    // server): reason="unavailable", what VNCConnectionFailures counts. A forged ticket: "unauthorized".
    const t = await stack.call('POST', `/api/v1/sessions/${s1}/vnc-ticket`, {}, admin);
    expect(t.status).toBe(201);
    expect(await openViewer(stack.apiPort, t.body.url)).toMatchObject({ status: expect.any(Number) });
    expect(await openViewer(stack.apiPort, `/api/v1/sessions/${s1}/vnc?ticket=forged`)).toMatchObject({ status: 401 });

    expect((await stack.call('POST', `/api/v1/sessions/${s1}/hibernate?wait=1`, undefined, admin)).status).toBeLessThan(300);
    await stack.waitForState(admin, s1, 'hibernated');
    expect(total([await gatewayMetrics()], 'streamspace_sessions', /state="hibernated",platform="docker"/)).toBe(1);
    expect((await stack.call('DELETE', `/api/v1/sessions/${s1}`, undefined, admin)).status).toBeLessThan(300);
    await stack.waitForState(admin, s1, 'terminated');
    const g2 = await gatewayMetrics();
    expect(total([g2], 'streamspace_sessions', /state="(running|hibernated)"/)).toBe(0);
    expect(total([g2], 'streamspace_sessions', /state="failed"/)).toBe(1);
  });

  test('commands: one redelivered (agent killed mid-start), one expired (worker and agent frozen past its deadline); the agent killed shows offline', async () => {
    // Agent B takes 2 s per start; A is full again with a new session so B gets the next ones.
    const sA = (await create()).body.id as string;
    await stack.waitForState(admin, sA, 'running');
    await startFake(AGENT_B, { MAX_SESSIONS: '5', FAKE_START_DELAY: '2s' });
    const agentB = stack.agents.get(AGENT_B)!;

    // Redelivery: B holds the start when it is killed; restarted, it is sent the same command again.
    const s3 = (await create()).body.id as string;
    await waitFor('start acknowledged by B', async () => (await commandRows(s3)).some((c) => c.status === 'ack' || c.status === 'sent'), 30_000, 20);
    await agentB.kill('SIGKILL');
    await startFake(AGENT_B, {});
    await waitFor(
      's3 settled',
      async () => ['running', 'failed'].includes((await stack.call('GET', `/api/v1/sessions/${s3}`, undefined, admin)).body.state),
      60_000,
      200,
    );

    // Expiry: with the worker frozen nobody withdraws the start at its deadline; the gateway's sweep expires it.
    const s4 = (await create()).body.id as string;
    await waitFor('start sent to B', async () => (await commandRows(s4)).some((c) => c.status === 'ack' || c.status === 'sent'), 30_000, 20);
    agentB.signal('SIGSTOP');
    stack.worker.signal('SIGSTOP');
    try {
      await waitFor('start expired', async () => (await commandRows(s4)).some((c) => c.command_type === 'start_session' && c.status === 'failed'), 30_000, 200);
    } finally {
      stack.worker.signal('SIGCONT');
      agentB.signal('SIGCONT');
    }
    await stack.waitForState(admin, s4, 'failed', 60_000);

    // Agent B killed: the gateway marks it offline.
    await agentB.kill('SIGKILL');
    await waitFor(
      'B offline in the metrics',
      async () => total([await gatewayMetrics()], 'streamspace_agent_status', new RegExp(`agent_id="${AGENT_B}",status="offline"`)) === 1,
      30_000,
      250,
    );
  });

  test('Redis cut from the gateway: redis_connection_status 0 on a Redis-hub pod, 1 again when it is back', async () => {
    const g = await gatewayMetrics();
    expect(total([g], 'streamspace_agent_hub_backend', /backend="redis"/)).toBe(1);
    expect(total([g], 'streamspace_redis_connection_status')).toBe(1);
    redisProxy.cut();
    try {
      await waitFor('Redis seen lost', async () => total([await gatewayMetrics()], 'streamspace_redis_connection_status') === 0, 30_000, 200);
    } finally {
      redisProxy.mend();
    }
    await waitFor('Redis back', async () => total([await gatewayMetrics()], 'streamspace_redis_connection_status') === 1, 60_000, 250);
  });

  test('Temporal: a worker cut from the frontend counts poll failures; a workflow task of an unknown type fails', async () => {
    extraWorker = await stack.startExtraWorker('worker-cut', { TEMPORAL_ADDRESS: `127.0.0.1:${temporalProxy.port}` });
    const url = workerMetricsUrl(extraWorker);
    await waitFor('the extra worker polls', async () => total([await scrape(url)], 'temporal_num_pollers', /poller_type="workflow_task"/) > 0, 30_000, 250);
    temporalProxy.cut();
    try {
      await waitFor('poll failures counted', async () => total([await scrape(url)], 'temporal_long_request_failure') > 0, 60_000, 500);
    } finally {
      temporalProxy.mend();
    }
    // A workflow type no worker registered: its first workflow task fails on whichever worker takes it.
    const handle = await stack.temporal.workflow.start('noSuchWorkflow', {
      taskQueue: stack.taskQueue,
      workflowId: `monitoring-unknown-${stack.id}`,
      args: [],
    });
    try {
      await waitFor(
        'workflow task failure counted',
        async () => total(await scrapeAll(), 'temporal_workflow_task_execution_failed', /workflow_type="noSuchWorkflow"/) > 0,
        60_000,
        500,
      );
    } finally {
      await handle.terminate('monitoring test').catch(() => undefined);
    }
  });

  test('Kubernetes agent HA on a real kube-apiserver: leader_status 1 on the leader, 0 on the follower; the follower takes over', async () => {
    cluster = await startKube({ tokens: [{ user: SA_USER, groups: ['system:serviceaccounts', 'system:serviceaccounts:streamspace'] }] });
    const adminKc = new k8s.KubeConfig();
    adminKc.loadFromString(cluster.kubeconfig());
    await adminKc.makeApiClient(k8s.CoreV1Api).createNamespace({ body: { metadata: { name: NS } } });
    const objectsApi = k8s.KubernetesObjectApi.makeApiClient(adminKc);
    const manifests = k8s.loadAllYaml(readFileSync(path.join(ROOT, 'deploy/kubernetes/k8s-agent.yaml'), 'utf8')) as any[];
    for (const m of manifests.filter((x) => x.kind !== 'Deployment' && (!x.metadata?.namespace || x.metadata.namespace === NS))) await objectsApi.create(m);
    const kubeconfig = path.join(stack.logDir, 'kubeconfig-agent.yaml');
    writeFileSync(kubeconfig, cluster.kubeconfig(cluster.tokens[SA_USER]));
    for (const name of ['k8s-mon-0', 'k8s-mon-1']) {
      const port = await freePort();
      const proc = stack.startAgentProcess(name, 'agents/kubernetes/main.js', {
        AGENT_ID: K8S_AGENT,
        AGENT_TOKEN: stack.agentToken(K8S_AGENT),
        CONTROL_PLANE_URL: `ws://127.0.0.1:${stack.agentPort}`,
        PLATFORM: 'kubernetes',
        NAMESPACE: NS,
        KUBECONFIG: kubeconfig,
        ENABLE_HA: 'true',
        LEASE_LOCK_NAME: 'k8s-agent-leader',
        LEASE_LOCK_NAMESPACE: NS,
        POD_NAME: name,
        HEALTH_HOST: '127.0.0.1',
        HEALTH_PORT: String(port),
        LEASE_DURATION: '4s',
        RENEW_DEADLINE: '3s',
        RETRY_PERIOD: '1s',
      });
      k8sReplicas.push({ proc, port });
    }
    const leaderStatus = async (r: { port: number }) =>
      total([await scrape(`http://127.0.0.1:${r.port}/metrics`)], 'streamspace_agent_leader_status', new RegExp(`agent_id="${K8S_AGENT}"`));
    const statuses = () => Promise.all(k8sReplicas.map((r) => leaderStatus(r).catch(() => -1)));
    const first = await waitFor(
      'one leader, one follower',
      async () => {
        const s = await statuses();
        return s.sort().join(',') === '0,1' ? s : undefined;
      },
      120_000,
      250,
    );
    expect(first).toBeDefined();
    const leader = (await statuses()).indexOf(1);
    const follower = k8sReplicas[1 - leader];
    await k8sReplicas[leader].proc.kill('SIGKILL');
    await waitFor('the follower leads', async () => (await leaderStatus(follower)) === 1, 30_000, 250);
  });

  test('every metric the alert rules and the dashboard query is exported by a process (names checked against the scrapes)', async () => {
    after = await scrapeAll();
    const scrapes = [...before, ...after];
    const missing = (names: string[]) => names.filter((n) => !EXTERNAL.has(n) && !scrapes.some((s) => s.family(n)));
    const ruleNames = [...new Set(rules().flatMap((r) => metricNames(r.expr)))];
    const dashNames = [...new Set(dashboardExprs().flatMap(metricNames))];
    expect(ruleNames.length).toBeGreaterThan(15);
    expect(missing(ruleNames)).toEqual([]);
    expect(missing(dashNames)).toEqual([]);
    // The Core SDK's names as the rules spell them: counters without _total, histograms in milliseconds.
    const all = after.map((s) => s.text).join('\n');
    expect(all).toMatch(/^# TYPE temporal_long_request_failure counter$/m);
    expect(all).toMatch(/^# TYPE temporal_workflow_task_execution_failed counter$/m);
    expect(all).toMatch(/^temporal_workflow_task_execution_failed\{[^}]*failure_reason="[^"]+"[^}]*\} /m);
    expect(all).toMatch(/^temporal_activity_schedule_to_start_latency_bucket\{[^}]*le="1000"[^}]*\} /m);
  });

  test('every metric the alert rules use moved between the first and the last scrape', async () => {
    if (!after.length) after = await scrapeAll();
    // What each rule's metric measured in this test (series filters as the rules select them).
    const moved: [string, RegExp | undefined][] = [
      ['streamspace_agent_status', /status="offline"/],
      ['streamspace_session_failures_total', /reason="no_capacity"/],
      ['streamspace_session_failures_total', undefined],
      ['streamspace_session_start_seconds_count', undefined],
      ['streamspace_commands_expired_total', undefined],
      ['streamspace_command_redeliveries_total', undefined],
      ['streamspace_vnc_connection_failures_total', /reason="unavailable"/],
      ['streamspace_vnc_connection_failures_total', /reason="unauthorized"/],
      ['temporal_num_pollers', /poller_type="workflow_task"/],
      ['temporal_worker_task_slots_available', undefined],
      ['temporal_long_request_failure', undefined],
      ['temporal_workflow_task_execution_failed', undefined],
      ['temporal_workflow_task_schedule_to_start_latency_bucket', undefined],
      ['temporal_activity_schedule_to_start_latency_bucket', undefined],
    ];
    const report = moved.map(([name, filter]) => ({
      name: `${name}${filter ? ` ${filter}` : ''}`,
      before: total(before, name, filter),
      after: total(after, name, filter),
    }));
    for (const r of report) expect([r.name, r.after > r.before]).toEqual([r.name, true]);
    // Moves observed during the tests above, not visible as a before/after difference of the final state:
    // redis_connection_status went 1 -> 0 -> 1 (Redis test), leader_status 0 -> 1 on the follower (HA test),
    // streamspace_vnc_connections_total stays 0 (no VNC server behind the fake agent): it is the denominator.
    const ruleMetrics = new Set(rules().flatMap((r) => metricNames(r.expr)));
    const covered = new Set([
      ...moved.map(([n]) => n),
      'streamspace_redis_connection_status',
      'streamspace_agent_hub_backend',
      'streamspace_agent_leader_status',
      'streamspace_vnc_connections_total',
    ]);
    expect([...ruleMetrics].filter((n) => !EXTERNAL.has(n) && !covered.has(n))).toEqual([]);
    console.log(report.map((r) => `${r.name}: ${r.before} -> ${r.after}`).join('\n'));
    await sleep(0);
  });
});
