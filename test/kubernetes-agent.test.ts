/**
 * Issue 4 on a real kube-apiserver (+ etcd). A bare API server has no kubelet or scheduler, so
 * this test plays the kubelet: for every session pod it starts the pod's "container" (the local
 * session image, host networking, on the pod's VNC port), then writes the pod's status (Running,
 * Ready, podIP 127.0.0.1) through the /status subresource. The agents run as the spec's
 * ServiceAccount with exactly the Role in deploy/kubernetes/k8s-agent.yaml, never as an admin.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { FakeKubelet } from './harness/fake-kubelet';
import { KubeCluster, loadKubeClient, startKube } from './harness/kube';
import { Proc, ROOT, Stack, waitFor } from './harness/stack';

jest.setTimeout(600_000);

const k8s = loadKubeClient();
const NS = 'streamspace';
const SA_USER = 'system:serviceaccount:streamspace:streamspace-agent';
const AGENT_ID = 'k8s-test-cluster';
const VNC_PORT = 15990;
const LEASE = { LEASE_DURATION: '4s', RENEW_DEADLINE: '3s', RETRY_PERIOD: '500ms' };

const code = async (p: Promise<unknown>) =>
  p.then(
    () => 200,
    (err: { code?: number }) => err.code ?? 0,
  );

describe('Kubernetes agent on a real API server', () => {
  let cluster: KubeCluster;
  const stack = new Stack('kubernetes');
  let admin: string;
  let adminCore: import('@kubernetes/client-node').CoreV1Api;
  let agentKc: import('@kubernetes/client-node').KubeConfig;
  let kubelet: FakeKubelet;
  let kubeconfigPath: string;
  const replicas: Proc[] = [];

  const objects = async (sessionId: string) => {
    const sel = `streamspace.io/session-id=${sessionId}`;
    const [pods, svcs] = await Promise.all([
      adminCore.listNamespacedPod({ namespace: NS, labelSelector: sel }),
      adminCore.listNamespacedService({ namespace: NS, labelSelector: sel }),
    ]);
    return { pods: pods.items, services: svcs.items };
  };
  const lease = () =>
    agentKc
      .makeApiClient(k8s.CoordinationV1Api)
      .readNamespacedLease({ name: 'k8s-agent-leader', namespace: NS })
      .then(
        (l) => l.spec?.holderIdentity ?? '',
        () => '',
      );
  const replicaOf = (holder: string) => replicas.find((r) => holder.startsWith(`${r.name}_`));

  beforeAll(async () => {
    cluster = await startKube({ tokens: [{ user: SA_USER, groups: ['system:serviceaccounts', 'system:serviceaccounts:streamspace'] }] });
    const adminKc = new k8s.KubeConfig();
    adminKc.loadFromString(cluster.kubeconfig());
    adminCore = adminKc.makeApiClient(k8s.CoreV1Api);
    for (const ns of [NS, 'streamspace-v2']) await adminCore.createNamespace({ body: { metadata: { name: ns } } });
    // The agent's RBAC from our manifests, applied for real.
    const objectsApi = k8s.KubernetesObjectApi.makeApiClient(adminKc);
    const manifests = k8s.loadAllYaml(readFileSync(path.join(ROOT, 'deploy/kubernetes/k8s-agent.yaml'), 'utf8')) as any[];
    for (const m of manifests.filter((x) => x.kind !== 'Deployment')) await objectsApi.create(m);

    agentKc = new k8s.KubeConfig();
    agentKc.loadFromString(cluster.kubeconfig(cluster.tokens[SA_USER]));
    kubeconfigPath = path.join(stack.logDir, 'agent-kubeconfig.yaml');
    writeFileSync(kubeconfigPath, cluster.kubeconfig(cluster.tokens[SA_USER]));

    kubelet = new FakeKubelet(adminCore, NS);
    kubelet.start();
    await stack.start();
    admin = await stack.login();
    const tpl = await stack.call(
      'POST',
      '/api/v1/templates',
      {
        name: 'k8s-desktop',
        manifest: {
          displayName: 'Desktop on Kubernetes',
          baseImage: 'streamspace/session:local',
          defaultResources: { memory: '1Gi', cpu: '500m' },
          vnc: { enabled: true, port: VNC_PORT },
          env: [{ name: 'GREETING', value: 'hello' }],
          volumeMounts: [{ name: 'user-home', mountPath: '/config' }],
        },
      },
      admin,
    );
    expect(tpl.status).toBe(201);
    for (let i = 0; i < 3; i++) {
      replicas.push(
        stack.startAgentProcess(`k8s-agent-${i}`, 'agents/kubernetes/main.js', {
          AGENT_ID,
          AGENT_TOKEN: stack.agentToken(AGENT_ID),
          CONTROL_PLANE_URL: `ws://127.0.0.1:${stack.agentPort}`,
          PLATFORM: 'kubernetes',
          NAMESPACE: NS,
          KUBECONFIG: kubeconfigPath,
          ENABLE_HA: 'true',
          LEASE_LOCK_NAME: 'k8s-agent-leader',
          LEASE_LOCK_NAMESPACE: NS,
          POD_NAME: `k8s-agent-${i}`,
          ...LEASE,
        }),
      );
    }
    await waitFor('a leader registered with the control plane', async () => {
      const agents = await stack.call('GET', '/api/v1/agents', undefined, admin);
      return agents.body.some((a: { agent_id: string; status: string }) => a.agent_id === AGENT_ID && a.status === 'online');
    });
  });

  afterAll(async () => {
    await kubelet?.stop();
    await stack.stop();
    await cluster?.stop();
  });

  test('the manifests pass a server-side dry run', async () => {
    const adminKc = new k8s.KubeConfig();
    adminKc.loadFromString(cluster.kubeconfig());
    const objectsApi = k8s.KubernetesObjectApi.makeApiClient(adminKc);
    for (const file of ['control-plane.yaml', 'k8s-agent.yaml']) {
      for (const m of k8s.loadAllYaml(readFileSync(path.join(ROOT, 'deploy/kubernetes', file), 'utf8')) as any[]) {
        const exists = await code(objectsApi.read(m));
        await (exists === 200 ? objectsApi.replace(m, undefined, 'All') : objectsApi.create(m, undefined, 'All'));
      }
    }
  });

  test('only one replica leads; the others are followers naming the leader', async () => {
    const holder = await waitFor('lease holder', lease);
    const leader = replicaOf(holder);
    expect(leader).toBeDefined();
    for (const r of replicas.filter((x) => x !== leader)) {
      await waitFor(`${r.name} to log FOLLOWER`, async () => new RegExp(`FOLLOWER \\(leader: ${leader!.name}_`).test(r.output), 15_000);
    }
    expect(leader!.output).toMatch(/Successfully acquired leader lease[\s\S]*This agent is the LEADER/);
  });

  test('the agent identity is refused what its Role does not grant', async () => {
    const core = agentKc.makeApiClient(k8s.CoreV1Api);
    expect(await code(core.listNamespacedSecret({ namespace: NS }))).toBe(403);
    expect(await code(core.listNamespacedPod({ namespace: 'kube-system' }))).toBe(403);
    expect(await code(core.listNamespacedPod({ namespace: NS }))).toBe(200);
  });

  test('create → pod, Service and PVC with the template spec → Ready → running; hibernate, wake, stop', async () => {
    const created = await stack.call('POST', '/api/v1/sessions', { user: 'kate', template: 'k8s-desktop', platform: 'kubernetes' }, admin);
    expect(created.status).toBe(201);
    const id = created.body.id;
    const running = await stack.waitForState(admin, id, 'running', 120_000);
    expect(running.agent_id).toBe(AGENT_ID);

    const { pods, services } = await objects(id);
    expect(pods).toHaveLength(1);
    expect(services).toHaveLength(1);
    const pod = pods[0];
    expect(pod.metadata!.labels).toMatchObject({
      'streamspace.io/session-id': id,
      'streamspace.io/user': 'kate',
      'streamspace.io/template': 'k8s-desktop',
      'app.kubernetes.io/managed-by': 'streamspace',
    });
    const c = pod.spec!.containers[0];
    expect(c.image).toBe('streamspace/session:local');
    expect(c.ports![0].containerPort).toBe(VNC_PORT);
    expect(c.resources!.requests).toEqual({ cpu: '500m', memory: '1Gi' });
    expect(c.env).toEqual(expect.arrayContaining([{ name: 'GREETING', value: 'hello' }]));
    const pvc = await adminCore.readNamespacedPersistentVolumeClaim({ name: 'ss-home-kate', namespace: NS });
    expect(pvc.metadata!.labels).toMatchObject({ 'streamspace.io/user': 'kate' });

    // The VNC tunnel reaches the pod's endpoint through the Kubernetes agent.
    const ticket = await stack.call('POST', `/api/v1/sessions/${id}/vnc-ticket`, {}, admin);
    const WebSocket = (await import('ws')).default;
    const greeting = await new Promise<string>((resolve, reject) => {
      const ws = new WebSocket(`ws://127.0.0.1:${stack.apiPort}${ticket.body.url}`);
      ws.on('message', (d: Buffer) => (resolve(d.subarray(0, 12).toString()), ws.close()));
      ws.on('unexpected-response', (_r, res) => reject(new Error(`refused ${res.statusCode}`)));
    });
    expect(greeting).toBe('RFB 003.008\n');

    expect((await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin)).body.state).toBe('hibernated');
    expect((await objects(id)).pods).toHaveLength(0);
    expect(await code(adminCore.readNamespacedPersistentVolumeClaim({ name: 'ss-home-kate', namespace: NS }))).toBe(200);

    expect((await stack.call('POST', `/api/v1/sessions/${id}/wake`, undefined, admin)).body.state).toBe('running');
    expect((await objects(id)).pods).toHaveLength(1);

    expect((await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin)).body.state).toBe('terminated');
    expect(await objects(id)).toEqual({ pods: [], services: [] });
    expect(await code(adminCore.readNamespacedPersistentVolumeClaim({ name: 'ss-home-kate', namespace: NS }))).toBe(200);
  });

  test("an imported v1 session wakes on the Kubernetes agent with v1's home PVC home-<user>, which outlives it", async () => {
    // v1's controller had made the PVC home-<Spec.User> (the username); the session's files live there.
    expect((await stack.call('POST', '/api/v1/users', { username: 'vera', password: 'vera-password' }, admin)).status).toBe(201);
    await adminCore.createNamespacedPersistentVolumeClaim({
      namespace: NS,
      body: {
        metadata: { name: 'home-vera', labels: { app: 'streamspace' } },
        spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
      },
    });
    const crd = {
      apiVersion: 'stream.space/v1alpha1',
      kind: 'Session',
      metadata: { name: `vera-k8s-desktop-${stack.id}`, namespace: NS },
      spec: { user: 'vera', template: 'k8s-desktop', state: 'hibernated', persistentHome: true },
    };
    const imported = await stack.call('POST', '/api/v1/sessions/bulk-import', [crd], admin);
    expect(imported.body).toEqual(expect.objectContaining({ imported: 1, failed: 0 }));
    const id = crd.metadata.name;
    expect((await stack.call('GET', `/api/v1/sessions/${id}`, undefined, admin)).body).toEqual(
      expect.objectContaining({ state: 'hibernated', platform: 'kubernetes', user: 'vera' }),
    );

    expect((await stack.call('POST', `/api/v1/sessions/${id}/wake`, undefined, admin)).body.state).toBe('running');
    const { pods } = await objects(id);
    expect(pods).toHaveLength(1);
    expect(pods[0].spec!.volumes).toEqual([{ name: 'home', persistentVolumeClaim: { claimName: 'home-vera' } }]);
    expect(pods[0].spec!.containers[0].volumeMounts).toEqual([{ name: 'home', mountPath: '/config' }]);
    expect(await code(adminCore.readNamespacedPersistentVolumeClaim({ name: 'ss-home-vera', namespace: NS }))).toBe(404);

    expect((await stack.call('POST', `/api/v1/sessions/${id}/hibernate`, undefined, admin)).body.state).toBe('hibernated');
    expect((await objects(id)).pods).toHaveLength(0);
    expect((await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin)).body.state).toBe('terminated');
    expect(await code(adminCore.readNamespacedPersistentVolumeClaim({ name: 'home-vera', namespace: NS }))).toBe(200);
  });

  test('bad templates fail the session with a clear reason and leave no object behind', async () => {
    for (const [name, manifest, reason] of [
      ['no-image', { displayName: 'No image', vnc: { port: VNC_PORT } }, /has no baseImage/],
      ['negative-cpu', { displayName: 'Negative', baseImage: 'streamspace/session:local', defaultResources: { cpu: '-1' } }, /invalid cpu request "-1"/],
    ] as const) {
      expect((await stack.call('POST', '/api/v1/templates', { name, manifest }, admin)).status).toBe(201);
      const s = await stack.call('POST', '/api/v1/sessions', { template: name, platform: 'kubernetes' }, admin);
      const failed = await stack.waitForState(admin, s.body.id, 'failed', 60_000);
      expect(failed.error).toMatch(reason);
      expect(await objects(s.body.id)).toEqual({ pods: [], services: [] });
    }
  });

  test('leader killed (-9) during a start: a follower takes the Lease within LEASE_DURATION + 2s and the start completes with one pod', async () => {
    const holder = await waitFor('lease holder', lease);
    const leader = replicaOf(holder)!;
    const created = await stack.call('POST', '/api/v1/sessions', { user: 'leo', template: 'k8s-desktop', platform: 'kubernetes' }, admin);
    const id = created.body.id;
    await waitFor(
      'start command delivered',
      async () => {
        const r = await stack.pool.query(`SELECT status FROM agent_commands WHERE session_id = $1`, [id]);
        return r.rows.some((x) => x.status === 'ack');
      },
      30_000,
      10,
    );
    const killedAt = Date.now();
    await leader.kill('SIGKILL');
    const next = await waitFor(
      'a new lease holder',
      async () => {
        const h = await lease();
        return h && h !== holder ? h : undefined;
      },
      30_000,
      50,
    );
    const failoverMs = Date.now() - killedAt;
    console.log(`leader crash failover: ${failoverMs} ms (LEASE_DURATION 4s)`);
    expect(failoverMs).toBeLessThan(4000 + 2000);
    expect(replicaOf(next)).toBeDefined();
    await stack.waitForState(admin, id, 'running', 120_000);
    expect((await objects(id)).pods).toHaveLength(1);
    await stack.call('DELETE', `/api/v1/sessions/${id}`, undefined, admin);
  });

  test('leader SIGTERM: the Lease is released and a follower takes over in under a second', async () => {
    const holder = await waitFor('lease holder', lease);
    const leader = replicaOf(holder)!;
    const start = Date.now();
    leader.signal('SIGTERM');
    const next = await waitFor(
      'a new lease holder',
      async () => {
        const h = await lease();
        return h && h !== holder ? h : undefined;
      },
      10_000,
      20,
    );
    const handoverMs = Date.now() - start;
    console.log(`graceful hand-over: ${handoverMs} ms`);
    expect(handoverMs).toBeLessThan(1000);
    expect(replicaOf(next)).not.toBe(leader);
    await waitFor('new leader registered', async () => {
      const agents = await stack.call('GET', '/api/v1/agents', undefined, admin);
      return agents.body.some((a: { agent_id: string; status: string }) => a.agent_id === AGENT_ID && a.status === 'online');
    });
  });
});
