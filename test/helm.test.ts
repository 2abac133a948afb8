/**
 * The Helm chart (deploy/helm/streamspace): `helm lint`, `helm template` with the chart's CI values
 * (ci/default-values.yaml: smallest install; ci/ha-values.yaml: autoscaled gateway and worker, Redis
 * hub, HA agent with sessions in another namespace, Ingress, Temporal mTLS + API key), then every
 * rendered object is sent to a real kube-apiserver (test/harness/kube.ts) as a server-side dry run
 * (?dryRun=All&fieldValidation=Strict: admission, defaulting, schema validation; unknown or duplicate
 * fields are errors). The agent's RBAC is created for real and checked with SubjectAccessReviews
 * against what agents/kubernetes calls.
 *
 * helm comes from scripts/build-helm.sh (HELM_BIN overrides); without it the test fails, never skips.
 *
 * Chart.yaml declares the official Temporal chart as a dependency (condition temporal.enabled, off by
 * default). `helm template` refuses a chart whose declared dependency is missing from charts/ even when
 * its condition is false, and this machine cannot download charts, so templating runs on a copy of the
 * chart with the dependency removed from Chart.yaml (nothing else changes); a test below pins that
 * behaviour of the original chart, `helm lint` runs on the original too.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { KubeCluster, startKube } from './harness/kube';

jest.setTimeout(300_000);

const ROOT = path.resolve(__dirname, '..');
const CHART = path.join(ROOT, 'deploy', 'helm', 'streamspace');
const HELM = process.env.HELM_BIN || '/var/cache/streamspace/bin/helm';
const RELEASE = 'streamspace';
const NS = 'streamspace';
const SESSION_NS = 'streamspace-sessions'; // agent.sessionNamespace in ci/ha-values.yaml
// js-yaml through @kubernetes/client-node's own dependency: client-node's loadAllYaml would map objects
// onto its typed models and drop fields it does not know, which is what the dry run must see.
const yaml = createRequire(require.resolve('@kubernetes/client-node'))('js-yaml') as {
  loadAll(s: string): unknown[];
  load(s: string): unknown;
  dump(o: unknown): string;
};

interface KObj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [k: string]: unknown;
}
type Any = any;

function run(args: string[]): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(HELM, args, {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, HELM_CACHE_HOME: helmHome, HELM_CONFIG_HOME: helmHome, HELM_DATA_HOME: helmHome },
  });
  if (r.error) throw r.error;
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function helmOk(args: string[]): string {
  const r = run(args);
  if (r.status !== 0) throw new Error(`helm ${args.join(' ')} exited ${r.status}:\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

function parse(manifest: string): KObj[] {
  return (yaml.loadAll(manifest) as KObj[]).filter((o) => o && typeof o === 'object');
}

let helmHome: string;
let work: string;
let chartCopy: string;

/** The chart without its (disabled) Temporal dependency: helm template needs no charts/ then. */
function copyWithoutDependencies(dest: string): string {
  cpSync(CHART, dest, { recursive: true });
  const file = path.join(dest, 'Chart.yaml');
  const chart = yaml.load(readFileSync(file, 'utf8')) as Any;
  expect(chart.dependencies.map((d: Any) => d.name)).toEqual(['temporal']);
  delete chart.dependencies;
  writeFileSync(file, yaml.dump(chart));
  return dest;
}

function template(chart: string, valueFiles: string[], set: string[] = []): KObj[] {
  const args = ['template', RELEASE, chart, '--namespace', NS];
  for (const f of valueFiles) args.push('-f', path.join(CHART, 'ci', f));
  for (const s of set) args.push('--set', s);
  return parse(helmOk(args));
}

const find = (objs: KObj[], kind: string, name: string): Any => {
  const o = objs.find((x) => x.kind === kind && x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name} in [${objs.map((x) => `${x.kind}/${x.metadata.name}`).join(', ')}]`);
  return o;
};
const container = (objs: KObj[], deployment: string): Any => find(objs, 'Deployment', deployment).spec.template.spec.containers[0];
const envOf = (c: Any): Record<string, Any> => Object.fromEntries((c.env ?? []).map((e: Any) => [e.name, e.value ?? e.valueFrom]));
const secretData = (objs: KObj[], name: string): Record<string, string> =>
  Object.fromEntries(Object.entries(find(objs, 'Secret', name).data as Record<string, string>).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));

beforeAll(() => {
  if (!existsSync(HELM)) {
    throw new Error(`helm not found at ${HELM}: run \`bash scripts/build-helm.sh\` (scripts/provision.sh does) or set HELM_BIN`);
  }
  helmHome = mkdtempSync(path.join(os.tmpdir(), 'streamspace-helm-home-'));
  work = mkdtempSync(path.join(os.tmpdir(), 'streamspace-helm-'));
  chartCopy = copyWithoutDependencies(path.join(work, 'streamspace'));
});

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
  if (helmHome) rmSync(helmHome, { recursive: true, force: true });
});

describe('helm chart deploy/helm/streamspace', () => {
  test('helm is the version scripts/build-helm.sh builds', () => {
    const v = helmOk(['version', '--short']).trim();
    const pinned = /HELM_VERSION:-(v[0-9.]+)/.exec(readFileSync(path.join(ROOT, 'scripts', 'build-helm.sh'), 'utf8'))![1];
    expect(v.startsWith(pinned)).toBe(true);
  });

  test('helm lint passes: the original chart (only warning: the undownloaded Temporal dependency) and --strict without it', () => {
    for (const values of ['default-values.yaml', 'ha-values.yaml']) {
      const original = run(['lint', CHART, '-f', path.join(CHART, 'ci', values)]);
      expect({ values, status: original.status, out: original.stdout + original.stderr }).toMatchObject({ status: 0 });
      expect(original.stdout).toMatch(/\[WARNING\] .*chart directory is missing these dependencies: temporal/);
      expect(original.stdout.match(/\[(WARNING|ERROR)\]/g)).toHaveLength(1);
      const strict = run(['lint', '--strict', chartCopy, '-f', path.join(CHART, 'ci', values)]);
      expect({ values, status: strict.status, out: strict.stdout + strict.stderr }).toMatchObject({ status: 0 });
    }
    // helm lint turns `fail` into an [INFO] line (lint mode): it reports, the template test below enforces.
    const bare = run(['lint', chartCopy]);
    expect(bare.stdout + bare.stderr).toMatch(/\[INFO\] Fail:[\s\S]*no database credentials/);
  });

  test('helm template of the chart as shipped asks for `helm dependency update` (declared dependency, not vendored)', () => {
    const r = run(['template', RELEASE, CHART, '-f', path.join(CHART, 'ci', 'default-values.yaml')]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/missing in charts\/ directory: temporal/);
  });

  test('required values fail with a message naming what to set; no working default secret', () => {
    const fails = (set: string[], re: RegExp) => {
      const args = ['template', RELEASE, chartCopy, '--namespace', NS];
      for (const s of set) args.push('--set', s);
      const r = run(args);
      expect({ set, status: r.status }).toEqual({ set, status: 1 });
      expect(r.stderr).toMatch(re);
    };
    fails([], /no database credentials.*database\.password/);
    fails(['database.password=x'], /needs its AGENT_TOKEN.*agent\.token/);
    fails(['database.password=x', 'agent.enabled=false', 'gateway.replicaCount=3'], /Redis: set redis\.url/);
    fails(['database.password=x', 'agent.enabled=false', 'gateway.autoscaling.enabled=true'], /Redis: set redis\.url/);
    fails(['database.password=x', 'agent.enabled=false', 'gateway.replicaCount=2', 'gateway.hubBackend=memory'], /memory works with one gateway replica only/);
    fails(['database.password=x', 'agent.enabled=false', 'redis.host=r'], /redis\.password is required/);
    fails(['database.password=x', 'agent.enabled=false', 'secrets.jwtSecret=short'], /at least 32 bytes/);
    fails(['database.password=x', 'agent.token=t0123456789abcdefghij', 'agent.ha.replicaCount=1'], /replicaCount >= 2/);
    fails(['database.password=x', 'agent.enabled=false', 'temporal.tls.enabled=true'], /temporal\.tls\.existingSecret/);

    // Generated secrets: random per render (lookup keeps them across upgrades on a cluster), long, distinct.
    const a = template(chartCopy, ['default-values.yaml']);
    const b = template(chartCopy, ['default-values.yaml']);
    const sa = secretData(a, 'streamspace-gateway');
    const sb = secretData(b, 'streamspace-gateway');
    expect(sa.JWT_SECRET).toMatch(/^[A-Za-z0-9]{64}$/);
    expect(sa.AGENT_TOKEN_SECRET).toMatch(/^[A-Za-z0-9]{64}$/);
    expect(sa.ADMIN_PASSWORD).toMatch(/^[A-Za-z0-9]{24}$/);
    expect(sa.JWT_SECRET).not.toBe(sa.AGENT_TOKEN_SECRET);
    for (const k of ['JWT_SECRET', 'AGENT_TOKEN_SECRET', 'ADMIN_PASSWORD']) expect(sa[k]).not.toBe(sb[k]);
    expect(find(a, 'Secret', 'streamspace-gateway').metadata.annotations['helm.sh/resource-policy']).toBe('keep');
    // Given values win.
    const given = secretData(
      template(chartCopy, ['default-values.yaml'], ['secrets.jwtSecret=' + 'j'.repeat(40), 'secrets.adminPassword=correct-horse-battery']),
      'streamspace-gateway',
    );
    expect(given).toMatchObject({ JWT_SECRET: 'j'.repeat(40), ADMIN_PASSWORD: 'correct-horse-battery' });
  });

  test('default values: gateway, worker and HA agent wired with the names the code reads', () => {
    const objs = template(chartCopy, ['default-values.yaml']);
    const kinds = objs.map((o) => `${o.kind}/${o.metadata.name}`).sort();
    expect(kinds).toEqual(
      [
        'Deployment/streamspace-agent',
        'Deployment/streamspace-gateway',
        'Deployment/streamspace-worker',
        'NetworkPolicy/streamspace-agent',
        'NetworkPolicy/streamspace-control-plane-egress',
        'NetworkPolicy/streamspace-gateway',
        'NetworkPolicy/streamspace-sessions-egress',
        'NetworkPolicy/streamspace-sessions-ingress',
        'NetworkPolicy/streamspace-worker',
        'PodDisruptionBudget/streamspace-agent',
        'Role/streamspace-agent-leader-election',
        'Role/streamspace-agent-sessions',
        'RoleBinding/streamspace-agent-leader-election',
        'RoleBinding/streamspace-agent-sessions',
        'Secret/streamspace-agent-token',
        'Secret/streamspace-connections',
        'Secret/streamspace-gateway',
        'Service/streamspace-gateway',
        'ServiceAccount/streamspace-agent',
        'ServiceAccount/streamspace-control-plane',
      ].sort(),
    );

    const gw = container(objs, 'streamspace-gateway');
    expect(gw.command).toEqual(['node', '--max-semi-space-size=64', 'dist/api/main.js']);
    expect(envOf(gw)).toMatchObject({
      HOST: '0.0.0.0',
      AGENT_HUB_BACKEND: 'memory',
      TEMPORAL_ADDRESS: 'temporal-frontend.temporal.svc.cluster.local:7233',
      TEMPORAL_NAMESPACE: 'default',
      TEMPORAL_TASK_QUEUE: 'streamspace-sessions',
      DB_HOST: 'postgres.streamspace.svc.cluster.local',
      AGENT_STREAM_URL: 'ws://$(POD_IP):8081',
    });
    expect(gw.envFrom.map((e: Any) => e.secretRef.name)).toEqual(['streamspace-gateway', 'streamspace-connections']);
    expect(gw.livenessProbe.httpGet.path).toBe('/health');
    expect(gw.readinessProbe.httpGet.path).toBe('/ready');
    expect(secretData(objs, 'streamspace-connections')).toEqual({ DB_USER: 'streamspace', DB_PASSWORD: 'ci-placeholder-db-password' });

    const wk = container(objs, 'streamspace-worker');
    expect(wk.command).toEqual(['node', 'dist/workers/main.js']);
    expect(envOf(wk)).toMatchObject({ WORKER_METRICS_HOST: '0.0.0.0', WORKER_METRICS_PORT: '9464' });
    expect(envOf(wk).JWT_SECRET).toBeUndefined();
    expect(wk.envFrom.map((e: Any) => e.secretRef.name)).toEqual(['streamspace-connections']);

    const ag = container(objs, 'streamspace-agent');
    const agent = find(objs, 'Deployment', 'streamspace-agent');
    expect(agent.spec.replicas).toBe(2);
    expect(ag.command).toEqual(['node', 'dist/agents/kubernetes/main.js']);
    expect(envOf(ag)).toMatchObject({
      PLATFORM: 'kubernetes',
      CONTROL_PLANE_URL: 'ws://streamspace-gateway.streamspace.svc:8081',
      AGENT_TOKEN: { secretKeyRef: { name: 'streamspace-agent-token', key: 'token' } },
      NAMESPACE: NS,
      HEALTH_HOST: '0.0.0.0',
      ENABLE_HA: 'true',
      LEASE_LOCK_NAME: 'k8s-agent-leader',
      LEASE_LOCK_NAMESPACE: NS,
      LEASE_DURATION: '15s',
      RENEW_DEADLINE: '10s',
      RETRY_PERIOD: '2s',
    });
    expect(ag.livenessProbe.httpGet.path).toBe('/health');
    // /ready: an HA follower is Ready while it could take over (agents/kubernetes/main.ts).
    expect(ag.readinessProbe.httpGet.path).toBe('/ready');
    expect(agent.spec.template.spec.serviceAccountName).toBe('streamspace-agent');

    // Every variable the chart sets is one the code reads (POD_IP only feeds $(POD_IP) references).
    const source = codeText();
    const names = new Set<string>();
    for (const o of [...objs, ...template(chartCopy, ['ha-values.yaml'])]) {
      if (o.kind !== 'Deployment') continue;
      for (const c of (o as Any).spec.template.spec.containers) for (const e of c.env ?? []) names.add(e.name);
    }
    for (const s of ['streamspace-gateway', 'streamspace-connections']) for (const k of Object.keys(secretData(objs, s))) names.add(k);
    names.delete('POD_IP');
    const unread = [...names].filter((n) => !new RegExp(`['"]${n}['"]|\\benv\\.${n}\\b`).test(source));
    expect(unread).toEqual([]);
  });

  test('HA values: HPAs, Redis hub, Ingress for WebSockets, Temporal mTLS + API key, sessions in their own namespace', () => {
    const objs = template(chartCopy, ['ha-values.yaml']);
    const gwDep = find(objs, 'Deployment', 'streamspace-gateway');
    expect(gwDep.spec.replicas).toBeUndefined(); // the HPA owns it
    const gw = envOf(gwDep.spec.template.spec.containers[0]);
    expect(gw.AGENT_HUB_BACKEND).toBe('redis');
    expect(gw.DB_HOST).toBeUndefined();
    expect(secretData(objs, 'streamspace-connections')).toEqual({
      DATABASE_URL: 'postgres://streamspace:ci-placeholder@postgres.db.svc:5432/streamspace?sslmode=require',
      REDIS_URL: 'redis://:ci-placeholder-redis-password@redis-master.streamspace.svc:6379/0',
    });
    for (const c of [gwDep.spec.template.spec.containers[0], container(objs, 'streamspace-worker')]) {
      expect(envOf(c)).toMatchObject({
        TEMPORAL_ADDRESS: 'streamspace.a1b2c.tmprl.cloud:7233',
        TEMPORAL_NAMESPACE: 'streamspace.a1b2c',
        TEMPORAL_TLS_CA_FILE: '/etc/streamspace/temporal-tls/ca.crt',
        TEMPORAL_TLS_CERT_FILE: '/etc/streamspace/temporal-tls/tls.crt',
        TEMPORAL_TLS_KEY_FILE: '/etc/streamspace/temporal-tls/tls.key',
        TEMPORAL_TLS_SERVER_NAME: 'streamspace.a1b2c.tmprl.cloud',
        TEMPORAL_API_KEY: { secretKeyRef: { name: 'temporal-api-key', key: 'TEMPORAL_API_KEY' } },
      });
      expect(c.volumeMounts).toContainEqual({ name: 'temporal-tls', mountPath: '/etc/streamspace/temporal-tls', readOnly: true });
    }
    expect(envOf(container(objs, 'streamspace-agent')).TEMPORAL_ADDRESS).toBeUndefined();

    for (const name of ['streamspace-gateway', 'streamspace-worker']) {
      const hpa = find(objs, 'HorizontalPodAutoscaler', name);
      expect(hpa.apiVersion).toBe('autoscaling/v2');
      expect(hpa.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name });
      find(objs, 'PodDisruptionBudget', name);
    }
    expect(find(objs, 'HorizontalPodAutoscaler', 'streamspace-gateway').spec).toMatchObject({ minReplicas: 4, maxReplicas: 12 });

    const ing = find(objs, 'Ingress', 'streamspace');
    const ann = ing.metadata.annotations;
    expect(ann['nginx.ingress.kubernetes.io/proxy-http-version']).toBe('1.1');
    expect(Number(ann['nginx.ingress.kubernetes.io/proxy-read-timeout'])).toBeGreaterThanOrEqual(3600);
    expect(Number(ann['nginx.ingress.kubernetes.io/proxy-send-timeout'])).toBeGreaterThanOrEqual(3600);
    expect(ann['nginx.ingress.kubernetes.io/proxy-buffering']).toBe('off');
    const paths = ing.spec.rules[0].http.paths;
    for (const p of ['/api/v1/agents/connect', '/api/v1/agents/stream', '/vnc-viewer', '/api']) {
      expect(paths.find((x: Any) => x.path === p)?.backend.service).toEqual({ name: 'streamspace-gateway', port: { number: 8080 } });
    }
    expect(ing.spec.tls).toEqual([{ hosts: ['streamspace.example.com'], secretName: 'streamspace-tls' }]);

    // The agent's Role for sessions lives in the session namespace, the Lease's in the release namespace.
    expect(find(objs, 'Role', 'streamspace-agent-sessions').metadata.namespace).toBe(SESSION_NS);
    expect(find(objs, 'Role', 'streamspace-agent-leader-election').metadata.namespace).toBe(NS);
    expect(envOf(container(objs, 'streamspace-agent')).NAMESPACE).toBe(SESSION_NS);
    expect(find(objs, 'Deployment', 'streamspace-agent').spec.replicas).toBe(3);

    // Sessions: reachable only from this release's agent pods.
    const sess = find(objs, 'NetworkPolicy', 'streamspace-sessions-ingress');
    expect(sess.metadata.namespace).toBe(SESSION_NS);
    expect(sess.spec.podSelector).toEqual({ matchLabels: { 'app.kubernetes.io/managed-by': 'streamspace' } });
    expect(sess.spec.ingress).toEqual([
      {
        from: [
          {
            podSelector: {
              matchLabels: { 'app.kubernetes.io/name': 'streamspace', 'app.kubernetes.io/instance': RELEASE, 'app.kubernetes.io/component': 'agent' },
            },
            namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': NS } },
          },
        ],
      },
    ]);
    // Gateway HTTP only from the Ingress controller (and the listed extra sources).
    const gwNp = find(objs, 'NetworkPolicy', 'streamspace-gateway');
    expect(gwNp.spec.ingress[0].from[0]).toEqual({
      namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ingress-nginx' } },
      podSelector: { matchLabels: { 'app.kubernetes.io/name': 'ingress-nginx' } },
    });
    expect(gwNp.spec.ingress[0].ports).toEqual([{ protocol: 'TCP', port: 8080 }]);
  });

  describe('on a real kube-apiserver', () => {
    let cluster: KubeCluster;
    let resources: Map<string, { plural: string; namespaced: boolean }>;

    const request = (method: string, urlPath: string, body?: unknown): Promise<{ status: number; body: Any; warnings: string[] }> =>
      new Promise((resolve, reject) => {
        const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
        const req = https.request(
          cluster.server + urlPath,
          {
            method,
            ca: readFileSync(cluster.caFile),
            headers: {
              Authorization: `Bearer ${cluster.adminToken}`,
              Accept: 'application/json',
              ...(data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {}),
            },
            timeout: 30_000,
          },
          (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (d: string) => (text += d));
            res.on('end', () => {
              let parsed: Any = text;
              try {
                parsed = JSON.parse(text);
              } catch {
                /* plain text */
              }
              const w = res.headers.warning;
              resolve({ status: res.statusCode ?? 0, body: parsed, warnings: w ? (Array.isArray(w) ? w : [w]) : [] });
            });
          },
        );
        req.on('timeout', () => req.destroy(new Error(`${method} ${urlPath} timed out`)));
        req.on('error', reject);
        req.end(data);
      });

    /** Discovery: apiVersion/kind -> resource, as kubectl does it. */
    async function discover(): Promise<Map<string, { plural: string; namespaced: boolean }>> {
      const map = new Map<string, { plural: string; namespaced: boolean }>();
      const groupVersions: string[] = ['v1'];
      const apis = await request('GET', '/apis');
      for (const g of apis.body.groups) for (const v of g.versions) groupVersions.push(v.groupVersion);
      for (const gv of groupVersions) {
        const r = await request('GET', gv === 'v1' ? '/api/v1' : `/apis/${gv}`);
        for (const res of r.body.resources) if (!res.name.includes('/')) map.set(`${gv}/${res.kind}`, { plural: res.name, namespaced: res.namespaced });
      }
      return map;
    }

    /** POST each object with dryRun=All and strict field validation; returns one line per refusal. */
    async function dryRun(objs: KObj[]): Promise<string[]> {
      const problems: string[] = [];
      for (const o of objs) {
        const what = `${o.kind}/${o.metadata.name}`;
        const r = resources.get(`${o.apiVersion}/${o.kind}`);
        if (!r) {
          problems.push(`${what}: the API server serves no ${o.apiVersion} ${o.kind}`);
          continue;
        }
        const base = o.apiVersion.includes('/') ? `/apis/${o.apiVersion}` : `/api/${o.apiVersion}`;
        if (r.namespaced && !o.metadata.namespace) problems.push(`${what}: namespaced but the chart sets no metadata.namespace`);
        const url = `${base}${r.namespaced ? `/namespaces/${o.metadata.namespace ?? NS}` : ''}/${r.plural}?dryRun=All&fieldValidation=Strict`;
        const res = await request('POST', url, o);
        if (res.status !== 201 && res.status !== 200) problems.push(`${what}: ${res.status} ${res.body?.message ?? JSON.stringify(res.body)}`);
        else if (res.warnings.length) problems.push(`${what}: warnings ${res.warnings.join('; ')}`);
        else if (res.body?.metadata?.name !== o.metadata.name) problems.push(`${what}: unexpected answer ${JSON.stringify(res.body).slice(0, 200)}`);
      }
      return problems;
    }

    beforeAll(async () => {
      cluster = await startKube();
      for (const name of [NS, SESSION_NS]) {
        const r = await request('POST', '/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
        expect(r.status).toBe(201);
      }
      resources = await discover();
    }, 180_000);

    afterAll(async () => {
      await cluster?.stop();
    });

    test('every object of the default and the HA render passes a server-side dry run (strict fields)', async () => {
      const sets: Array<[string, KObj[]]> = [
        ['default', template(chartCopy, ['default-values.yaml'])],
        ['ha', template(chartCopy, ['ha-values.yaml'])],
        [
          'no agent, single gateway, no policies',
          template(chartCopy, ['default-values.yaml'], ['agent.enabled=false', 'networkPolicy.enabled=false', 'ingress.enabled=true']),
        ],
        [
          'non-HA agent, inline Temporal TLS and API key',
          template(
            chartCopy,
            ['default-values.yaml'],
            ['agent.ha.enabled=false', 'temporal.tls.enabled=true', 'temporal.tls.ca=PEM', 'temporal.apiKey.value=k', 'networkPolicy.egress.enabled=false'],
          ),
        ],
      ];
      const kinds = new Set<string>();
      for (const [name, objs] of sets) {
        expect(objs.length).toBeGreaterThanOrEqual(7);
        for (const o of objs) kinds.add(o.kind);
        expect({ render: name, problems: await dryRun(objs) }).toEqual({ render: name, problems: [] });
      }
      expect([...kinds].sort()).toEqual(
        [
          'Deployment',
          'HorizontalPodAutoscaler',
          'Ingress',
          'NetworkPolicy',
          'PodDisruptionBudget',
          'Role',
          'RoleBinding',
          'Secret',
          'Service',
          'ServiceAccount',
        ].sort(),
      );
    });

    test.each([
      [
        'an unknown field (strict field validation)',
        'httpGet: { path: /ready, port: http }',
        'httpGet: { path: /ready, port: http, schema: HTTP }',
        /400 .*unknown field "spec\.template\.spec\.containers\[0\]\.readinessProbe\.httpGet\.schema"/,
      ],
      ['a string where an integer belongs', 'failureThreshold: 2', 'failureThreshold: "two"', /400 .*cannot unmarshal string .*failureThreshold/],
      [
        'an invalid value (API validation)',
        '- { name: agents, containerPort: {{ .Values.gateway.agentWsPort }}',
        '- { name: agent-websocket-port, containerPort: {{ .Values.gateway.agentWsPort }}',
        /422 .*ports\[1\]\.name.*must be no more than 15 characters/,
      ],
    ])('negative control: a template with %s is refused by the dry run', async (_what, from, to, expected) => {
      const broken = mkdtempSync(path.join(work, 'broken-'));
      cpSync(chartCopy, broken, { recursive: true });
      const file = path.join(broken, 'templates', 'gateway.yaml');
      const text = readFileSync(file, 'utf8');
      expect(text.split(from)).toHaveLength(2);
      writeFileSync(file, text.replace(from, to));
      const problems = await dryRun(template(broken, ['default-values.yaml']));
      expect(problems).toHaveLength(1);
      expect(problems[0]).toMatch(/^Deployment\/streamspace-gateway: /);
      expect(problems[0]).toMatch(expected);
    });

    test("the agent's RBAC, created for real, allows exactly what agents/kubernetes calls", async () => {
      const objs = template(chartCopy, ['ha-values.yaml']).filter((o) => ['ServiceAccount', 'Role', 'RoleBinding'].includes(o.kind));
      for (const o of objs) {
        const r = resources.get(`${o.apiVersion}/${o.kind}`)!;
        const base = o.apiVersion.includes('/') ? `/apis/${o.apiVersion}` : `/api/${o.apiVersion}`;
        const res = await request('POST', `${base}/namespaces/${o.metadata.namespace}/${r.plural}`, o);
        expect({ what: `${o.kind}/${o.metadata.name}`, status: res.status }).toEqual({ what: `${o.kind}/${o.metadata.name}`, status: 201 });
      }
      const user = `system:serviceaccount:${NS}:streamspace-agent`;
      const can = async (verb: string, resource: string, namespace: string, group = '', name?: string) => {
        const r = await request('POST', '/apis/authorization.k8s.io/v1/subjectaccessreviews', {
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: {
            user,
            groups: ['system:serviceaccounts', `system:serviceaccounts:${NS}`, 'system:authenticated'],
            resourceAttributes: { verb, resource, namespace, group, name },
          },
        });
        expect(r.status).toBe(201);
        return `${r.body.status.allowed ? 'allow' : 'deny'} ${verb} ${group ? group + '/' : ''}${resource}${name ? '/' + name : ''} in ${namespace}`;
      };
      const checks = [
        // driver.ts, in NAMESPACE (the session namespace)
        ...['get', 'list', 'create', 'delete'].flatMap((v) => [can(v, 'pods', SESSION_NS), can(v, 'services', SESSION_NS)]),
        can('create', 'persistentvolumeclaims', SESSION_NS),
        can('delete', 'persistentvolumeclaims', SESSION_NS),
        // leader.ts, in LEASE_LOCK_NAMESPACE
        can('get', 'leases', NS, 'coordination.k8s.io', 'k8s-agent-leader'),
        can('update', 'leases', NS, 'coordination.k8s.io', 'k8s-agent-leader'),
        can('create', 'leases', NS, 'coordination.k8s.io'),
        can('list', 'leases', NS, 'coordination.k8s.io'),
        can('watch', 'leases', NS, 'coordination.k8s.io'),
        // nothing else
        can('get', 'leases', NS, 'coordination.k8s.io', 'another-lease'),
        can('delete', 'leases', NS, 'coordination.k8s.io', 'k8s-agent-leader'),
        can('list', 'pods', NS),
        can('create', 'pods', 'default'),
        can('get', 'secrets', SESSION_NS),
        can('list', 'secrets', NS),
        can('create', 'pods/exec', SESSION_NS),
        can('update', 'pods', SESSION_NS),
        can('get', 'persistentvolumeclaims', SESSION_NS),
        can('create', 'events', SESSION_NS),
        can('list', 'nodes', ''),
      ];
      const results = await Promise.all(checks);
      expect(results.filter((r) => r.startsWith('allow'))).toHaveLength(15);
      expect(results.slice(15).filter((r) => r.startsWith('allow'))).toEqual([]);
      expect(results.slice(0, 15).filter((r) => r.startsWith('deny'))).toEqual([]);
    });
  });
});

/** The TypeScript the processes run (not tests): where env names are read. */
function codeText(): string {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const f of readdirSync(dir)) {
      const p = path.join(dir, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (p.endsWith('.ts')) out.push(readFileSync(p, 'utf8'));
    }
  };
  for (const d of ['api', 'config', 'agents', 'workers', 'db', 'activities']) if (existsSync(path.join(ROOT, d))) walk(path.join(ROOT, d));
  return out.join('\n');
}
