/**
 * The real Kubernetes API harness: etcd + kube-apiserver on loopback, static token auth, RBAC.
 * The test plays the kubelet by writing pod status through the /status subresource.
 */
import type { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { KubeCluster, loadKubeClient, startKube } from './harness/kube';

const k8s = loadKubeClient();
const NS = 'streamspace';

function api(cluster: KubeCluster, token: string): CoreV1Api {
  const kc: KubeConfig = new k8s.KubeConfig();
  kc.loadFromString(cluster.kubeconfig(token));
  return kc.makeApiClient(k8s.CoreV1Api);
}

async function statusCode(p: Promise<unknown>): Promise<number> {
  try {
    await p;
    return 200;
  } catch (err) {
    const code = (err as { code?: number }).code;
    if (typeof code !== 'number') throw err;
    return code;
  }
}

describe('kube harness (real kube-apiserver + etcd)', () => {
  let cluster: KubeCluster;

  beforeAll(async () => {
    cluster = await startKube({
      tokens: [{ user: 'agent-user', groups: ['streamspace:agents'] }],
    });
  }, 180_000);

  afterAll(async () => {
    await cluster?.stop();
  });

  test('serves the API on loopback with token auth', async () => {
    expect(cluster.server).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(cluster.tokens['agent-user']).toBeTruthy();
    const kc = new k8s.KubeConfig();
    kc.loadFromString(cluster.kubeconfig());
    const v = await kc.makeApiClient(k8s.VersionApi).getCode();
    expect(v.major).toBe('1');
  });

  test('admin creates a pod and plays the kubelet via /status; agent-user without a RoleBinding is forbidden', async () => {
    const admin = api(cluster, cluster.adminToken);
    await admin.createNamespace({ body: { metadata: { name: NS } } });

    const created = await admin.createNamespacedPod({
      namespace: NS,
      body: {
        metadata: { name: 'session-1', labels: { app: 'streamspace-session' } },
        spec: {
          containers: [{ name: 'session', image: 'streamspace/session:local' }],
        },
      },
    });
    expect(created.metadata?.uid).toBeTruthy();
    expect(created.status?.phase).toBe('Pending');

    const now = new Date().toISOString();
    await admin.patchNamespacedPodStatus({
      namespace: NS,
      name: 'session-1',
      // client-node 1.x sends JSON patch (application/json-patch+json) by default.
      body: [
        { op: 'add', path: '/status/phase', value: 'Running' },
        { op: 'add', path: '/status/podIP', value: '127.0.0.5' },
        { op: 'add', path: '/status/podIPs', value: [{ ip: '127.0.0.5' }] },
        { op: 'add', path: '/status/startTime', value: now },
        {
          op: 'add',
          path: '/status/conditions',
          value: [
            { type: 'PodScheduled', status: 'True', lastTransitionTime: now },
            { type: 'Initialized', status: 'True', lastTransitionTime: now },
            {
              type: 'ContainersReady',
              status: 'True',
              lastTransitionTime: now,
            },
            { type: 'Ready', status: 'True', lastTransitionTime: now },
          ],
        },
        {
          op: 'add',
          path: '/status/containerStatuses',
          value: [
            {
              name: 'session',
              image: 'streamspace/session:local',
              imageID: 'docker://sha256:0000000000000000000000000000000000000000000000000000000000000000',
              containerID: 'docker://session-1',
              ready: true,
              started: true,
              restartCount: 0,
              state: { running: { startedAt: now } },
            },
          ],
        },
      ],
    });

    const pod = await admin.readNamespacedPod({
      namespace: NS,
      name: 'session-1',
    });
    expect(pod.status?.phase).toBe('Running');
    expect(pod.status?.podIP).toBe('127.0.0.5');
    expect(pod.status?.conditions?.find((c) => c.type === 'Ready')?.status).toBe('True');
    expect(pod.status?.containerStatuses?.[0]?.ready).toBe(true);

    const pods = await admin.listNamespacedPod({ namespace: NS });
    expect(pods.items.map((p) => p.metadata?.name)).toEqual(['session-1']);

    const agent = api(cluster, cluster.tokens['agent-user']);
    expect(await statusCode(agent.listNamespacedPod({ namespace: NS }))).toBe(403);
    // An unknown token is not authenticated at all.
    expect(await statusCode(api(cluster, 'not-a-token').listNamespacedPod({ namespace: NS }))).toBe(401);
  });
});
