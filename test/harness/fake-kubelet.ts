/**
 * Plays kubelet + container runtime for session pods on a bare kube-apiserver (no kubelet, no
 * scheduler): for every session pod it starts the pod's "container" (its image, host networking,
 * on the pod's VNC port), then writes the pod's status (Running, Ready, podIP 127.0.0.1) through
 * the /status subresource.
 */
import Docker from 'dockerode';
import { rfbGreeting } from '../../agents/docker/driver';

export class FakeKubelet {
  private timer: NodeJS.Timeout | null = null;
  private readonly docker = new Docker({ socketPath: '/var/run/docker.sock' });
  private readonly running = new Map<string, string>();
  constructor(
    private readonly core: import('@kubernetes/client-node').CoreV1Api,
    private readonly namespace: string,
  ) {}

  start(): void {
    const tick = async () => {
      try {
        await this.sync();
      } catch {
        // next tick
      }
      if (this.timer) this.timer = setTimeout(tick, 100);
    };
    this.timer = setTimeout(tick, 100);
  }

  private async sync(): Promise<void> {
    const pods = (await this.core.listNamespacedPod({ namespace: this.namespace, labelSelector: 'app.kubernetes.io/managed-by=streamspace' })).items;
    const live = new Set(pods.map((p) => p.metadata!.name!));
    for (const [pod, container] of this.running) {
      if (!live.has(pod)) {
        this.running.delete(pod);
        await this.docker
          .getContainer(container)
          .remove({ force: true })
          .catch(() => undefined);
      }
    }
    for (const pod of pods) {
      const name = pod.metadata!.name!;
      if (pod.metadata?.deletionTimestamp) continue;
      if (!this.running.has(name)) {
        const c = pod.spec!.containers[0];
        const port = c.ports![0].containerPort;
        const container = await this.docker.createContainer({
          name: `kubelet-${name}`,
          Image: c.image!,
          Env: [...(c.env ?? []).map((e) => `${e.name}=${e.value}`), `VNC_LISTEN=127.0.0.1`, `VNC_DISPLAY=${port - 15900}`],
          HostConfig: { NetworkMode: 'host', AutoRemove: false },
          Labels: { 'io.streamspace.fake-kubelet': 'true' },
        });
        await container.start();
        this.running.set(name, container.id);
      }
      const ready = (pod.status?.conditions ?? []).some((x) => x.type === 'Ready' && x.status === 'True');
      if (!ready) {
        const port = pod.spec!.containers[0].ports![0].containerPort;
        const up = await rfbGreeting({ host: '127.0.0.1', port }, 500).then(
          () => true,
          () => false,
        );
        if (!up) continue;
        const now = new Date();
        await this.core.replaceNamespacedPodStatus({
          name,
          namespace: this.namespace,
          body: {
            ...pod,
            status: {
              phase: 'Running',
              podIP: '127.0.0.1',
              hostIP: '127.0.0.1',
              startTime: now,
              conditions: [
                { type: 'Ready', status: 'True', lastTransitionTime: now },
                { type: 'ContainersReady', status: 'True', lastTransitionTime: now },
              ],
            },
          },
        });
      }
    }
  }

  async stop(): Promise<void> {
    const t = this.timer;
    this.timer = null;
    if (t) clearTimeout(t);
    for (const c of this.running.values())
      await this.docker
        .getContainer(c)
        .remove({ force: true })
        .catch(() => undefined);
  }
}
