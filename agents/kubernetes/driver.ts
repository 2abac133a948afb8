/**
 * Kubernetes platform driver: per session a Pod and a Service (named ss-<sessionId>) and a home
 * PVC per user (ss-home-<user>, as v1's home-<user>), all labelled with session, user, template
 * and agent. Hibernate deletes the Pod (compute released, PVC and Service kept); wake recreates
 * it; stop deletes Pod and Service and keeps the PVC (deleting user data is a separate choice).
 * The session is reported running only once its Pod is Ready, with the Pod's VNC endpoint.
 *
 * Isolation: each Pod gets a fresh random VNC password (VncAuth) in its container environment;
 * the agent reads it back from the Pod spec (so it survives an agent restart) and completes the
 * RFB handshake itself (agents/common/tunnel.ts). A new Pod (wake) gets a new password. The Pod
 * runs as a non-root user with every capability dropped and no privilege escalation;
 * deploy/kubernetes/network-policy.yaml lets only agent pods reach session pods.
 */
import { CoreV1Api, KubeConfig, V1Pod } from '@kubernetes/client-node';
import type { Logger } from '../../config/log';
import type { CommandResult, ReportedSession, StartSessionData, VncEndpoint } from '../../protocol/messages';
import { CommandContext, DriverError, mustNotProceed, Progress, SessionDriver } from '../common/driver';
import { generateVncPassword, VNC_PASSWORD_ENV, VncSecretSource } from '../common/rfb-auth';

/** uid/gid the desktop runs as (the session image's "streamspace" user); never root. */
const SESSION_UID = 1000;

export interface KubernetesDriverOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  agentId: string;
  homeSize: string;
  storageClass: string | null;
  podReadyTimeoutMs: number;
  log: Logger;
}

export const LABEL = {
  managedBy: 'app.kubernetes.io/managed-by',
  session: 'streamspace.io/session-id',
  user: 'streamspace.io/user',
  template: 'streamspace.io/template',
  agent: 'streamspace.io/agent-id',
};
const VNC_PORT_ANNOTATION = 'streamspace.io/vnc-port';

const code = (err: unknown) => (err as { code?: number }).code;
/** Kubernetes label values: 63 chars of [A-Za-z0-9._-], alphanumeric at both ends. */
const labelValue = (v: string) =>
  v
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .slice(0, 63)
    .replace(/^[^A-Za-z0-9]+|[^A-Za-z0-9]+$/g, '') || 'x';
const dnsName = (v: string) =>
  v
    .toLowerCase()
    .replace(/[^a-z0-9-]/g, '-')
    .slice(0, 63)
    .replace(/-+$/, '');

export class KubernetesDriver implements SessionDriver, VncSecretSource {
  readonly platform = 'kubernetes' as const;
  private readonly core: CoreV1Api;

  constructor(private readonly o: KubernetesDriverOptions) {
    this.core = o.kubeConfig.makeApiClient(CoreV1Api);
  }

  objectName(sessionId: string): string {
    return dnsName(`ss-${sessionId}`);
  }

  /** The session's home PVC: the one the control plane names (an imported v1 session keeps v1's home-<user>), else one per user. */
  homeClaim(data: Pick<StartSessionData, 'user' | 'home_volume'>): string {
    return data.home_volume ?? dnsName(`ss-home-${data.user}`);
  }

  async init(): Promise<void> {
    try {
      await this.core.listNamespacedPod({ namespace: this.o.namespace, limit: 1 });
    } catch (err) {
      throw new Error(`cannot list pods in namespace ${this.o.namespace}: ${(err as Error).message}`);
    }
    this.o.log.info('Connected to Kubernetes API', { server: this.o.kubeConfig.getCurrentCluster()?.server, namespace: this.o.namespace });
  }

  async close(): Promise<void> {}

  async start(sessionId: string, data: StartSessionData, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    const name = this.objectName(sessionId);
    const generation = ctx?.generation ?? 0;
    const labels = this.labels(sessionId, data);
    const ns = this.o.namespace;
    let createdNow: string[] = [];
    try {
      if (data.persistent_home) {
        progress('ensuring home volume claim');
        if (await this.createIfAbsent(() => this.core.createNamespacedPersistentVolumeClaim({ namespace: ns, body: this.pvc(data) }))) createdNow.push('pvc');
      }
      if (mustNotProceed(ctx)) throw DriverError.abandoned('creating the session objects', ctx);
      progress('ensuring service');
      if (
        await this.createIfAbsent(() =>
          this.core.createNamespacedService({
            namespace: ns,
            body: {
              // The Service outlives hibernation, so it keeps what wake needs to recreate the Pod.
              metadata: { name, labels, annotations: { 'streamspace.io/session-id': sessionId, 'streamspace.io/start-data': JSON.stringify(data) } },
              spec: {
                selector: { [LABEL.session]: labelValue(sessionId) },
                ports: [{ name: 'vnc', port: data.template.vnc_port, targetPort: data.template.vnc_port }],
              },
            },
          }),
        )
      )
        createdNow.push('service');
      if (mustNotProceed(ctx)) throw DriverError.abandoned('creating the pod', ctx);
      progress('ensuring pod');
      if (await this.createIfAbsent(() => this.core.createNamespacedPod({ namespace: ns, body: this.pod(sessionId, data, generation) })))
        createdNow.push('pod');
    } catch (err) {
      // The API server refused our objects (e.g. an invalid quantity): leave nothing behind.
      if (code(err) === 422 || code(err) === 400) {
        await this.removeCreated(name, data, createdNow);
        throw new DriverError(`Kubernetes refused the session objects: ${apiMessage(err)}`, false);
      }
      if (code(err) === 403) throw new DriverError(`the agent is not allowed to create session objects: ${apiMessage(err)}`, false);
      throw err;
    }
    createdNow = [];
    return this.waitReady(sessionId, progress);
  }

  async hibernate(sessionId: string, progress: Progress): Promise<CommandResult> {
    progress('deleting pod (home volume kept)');
    await this.deletePod(sessionId);
    return { state: 'hibernated', platform_metadata: { pod: null, service: this.objectName(sessionId) } };
  }

  async wake(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    const name = this.objectName(sessionId);
    if (!(await this.readPod(name))) {
      // Rebuild the pod from the spec we stored on the Service when the session started.
      const svc = await this.core.readNamespacedService({ name, namespace: this.o.namespace }).catch((err) => {
        if (code(err) === 404) throw new DriverError(`session ${sessionId} has no objects on agent ${this.o.agentId}`, false);
        throw err;
      });
      const stored = svc.metadata?.annotations?.['streamspace.io/start-data'];
      if (!stored) throw new DriverError(`session ${sessionId} cannot be woken: its start data is missing`, false);
      if (mustNotProceed(ctx)) throw DriverError.abandoned('recreating the pod', ctx);
      progress('recreating pod');
      await this.createIfAbsent(() =>
        this.core.createNamespacedPod({ namespace: this.o.namespace, body: this.pod(sessionId, JSON.parse(stored), ctx?.generation ?? 0) }),
      );
    }
    return this.waitReady(sessionId, progress);
  }

  async stop(sessionId: string, progress: Progress): Promise<CommandResult> {
    progress('deleting pod and service (home volume kept)');
    await this.deletePod(sessionId);
    await this.core.deleteNamespacedService({ name: this.objectName(sessionId), namespace: this.o.namespace }).catch((err) => {
      if (code(err) !== 404) throw err;
    });
    return { state: 'terminated', platform_metadata: {} };
  }

  async list(): Promise<ReportedSession[]> {
    const selector = `${LABEL.managedBy}=streamspace,${LABEL.agent}=${labelValue(this.o.agentId)}`;
    const [pods, services] = await Promise.all([
      this.core.listNamespacedPod({ namespace: this.o.namespace, labelSelector: selector }),
      this.core.listNamespacedService({ namespace: this.o.namespace, labelSelector: selector }),
    ]);
    const out = new Map<string, ReportedSession>();
    for (const s of services.items) {
      const id = s.metadata?.annotations?.['streamspace.io/session-id'];
      if (id) out.set(id, { session_id: id, state: 'hibernated' });
    }
    for (const p of pods.items) {
      const id = p.metadata?.annotations?.['streamspace.io/session-id'];
      if (id) out.set(id, { session_id: id, state: isReady(p) ? 'running' : p.status?.phase === 'Failed' ? 'failed' : 'starting' });
    }
    return [...out.values()];
  }

  async vncEndpoint(sessionId: string): Promise<VncEndpoint> {
    const pod = await this.readPod(this.objectName(sessionId));
    if (!pod || !isReady(pod) || !pod.status?.podIP) throw new DriverError(`session ${sessionId} has no ready pod`, false);
    return { host: pod.status.podIP, port: Number(pod.metadata?.annotations?.[VNC_PORT_ANNOTATION] ?? 5900) };
  }

  /** The VNC password of the session's current Pod (from its spec), or null without a Pod. */
  async vncPassword(sessionId: string): Promise<string | null> {
    const pod = await this.readPod(this.objectName(sessionId));
    const env = pod?.spec?.containers.find((c) => c.name === 'session')?.env ?? [];
    return env.find((e) => e.name === VNC_PASSWORD_ENV)?.value ?? null;
  }

  // ------------------------------------------------------------------ internals

  private labels(sessionId: string, data: StartSessionData): Record<string, string> {
    return {
      [LABEL.managedBy]: 'streamspace',
      [LABEL.session]: labelValue(sessionId),
      [LABEL.user]: labelValue(data.user),
      [LABEL.template]: labelValue(data.template.name),
      [LABEL.agent]: labelValue(this.o.agentId),
    };
  }

  private pvc(data: StartSessionData) {
    return {
      metadata: { name: this.homeClaim(data), labels: { [LABEL.managedBy]: 'streamspace', [LABEL.user]: labelValue(data.user) } },
      spec: {
        accessModes: ['ReadWriteOnce'],
        resources: { requests: { storage: this.o.homeSize } },
        ...(this.o.storageClass ? { storageClassName: this.o.storageClass } : {}),
      },
    };
  }

  /** The Pod; `generation`: the command that creates it (annotation: "created twice" is countable per generation). */
  private pod(sessionId: string, data: StartSessionData, generation: number): V1Pod {
    const t = data.template;
    const resources = { ...(t.resources.cpu ? { cpu: t.resources.cpu } : {}), ...(t.resources.memory ? { memory: t.resources.memory } : {}) };
    return {
      metadata: {
        name: this.objectName(sessionId),
        labels: this.labels(sessionId, data),
        annotations: { 'streamspace.io/session-id': sessionId, [VNC_PORT_ANNOTATION]: String(t.vnc_port), 'streamspace.io/generation': String(generation) },
      },
      spec: {
        restartPolicy: 'Always',
        automountServiceAccountToken: false,
        enableServiceLinks: false,
        securityContext: {
          runAsNonRoot: true,
          runAsUser: SESSION_UID,
          runAsGroup: SESSION_UID,
          // The home PVC is group-owned by the session user, so the desktop can write to it.
          fsGroup: SESSION_UID,
          seccompProfile: { type: 'RuntimeDefault' },
        },
        containers: [
          {
            name: 'session',
            image: t.image,
            ports: [{ name: 'vnc', containerPort: t.vnc_port }],
            env: [
              ...Object.entries(t.env).map(([name, value]) => ({ name, value })),
              { name: 'HOME', value: t.home_mount },
              { name: 'VNC_PORT', value: String(t.vnc_port) },
              { name: 'STREAMSPACE_SESSION_ID', value: sessionId },
              { name: 'STREAMSPACE_USER', value: data.user },
              { name: VNC_PASSWORD_ENV, value: generateVncPassword() },
            ],
            securityContext: {
              allowPrivilegeEscalation: false,
              privileged: false,
              capabilities: { drop: ['ALL'] },
            },
            resources: Object.keys(resources).length ? { requests: resources, limits: resources } : undefined,
            readinessProbe: { tcpSocket: { port: t.vnc_port }, periodSeconds: 2 },
            volumeMounts: data.persistent_home ? [{ name: 'home', mountPath: t.home_mount }] : [],
          },
        ],
        volumes: data.persistent_home ? [{ name: 'home', persistentVolumeClaim: { claimName: this.homeClaim(data) } }] : [],
      },
    };
  }

  private async createIfAbsent(create: () => Promise<unknown>): Promise<boolean> {
    try {
      await create();
      return true;
    } catch (err) {
      if (code(err) === 409) return false;
      throw err;
    }
  }

  private async removeCreated(name: string, data: StartSessionData, created: string[]): Promise<void> {
    const ns = this.o.namespace;
    const ignore404 = (err: unknown) => {
      if (code(err) !== 404) throw err;
    };
    if (created.includes('pod')) await this.core.deleteNamespacedPod({ name, namespace: ns, gracePeriodSeconds: 0 }).catch(ignore404);
    if (created.includes('service')) await this.core.deleteNamespacedService({ name, namespace: ns }).catch(ignore404);
    if (created.includes('pvc')) await this.core.deleteNamespacedPersistentVolumeClaim({ name: this.homeClaim(data), namespace: ns }).catch(ignore404);
  }

  private async readPod(name: string): Promise<V1Pod | null> {
    try {
      return await this.core.readNamespacedPod({ name, namespace: this.o.namespace });
    } catch (err) {
      if (code(err) === 404) return null;
      throw err;
    }
  }

  private async deletePod(sessionId: string): Promise<void> {
    const name = this.objectName(sessionId);
    await this.core.deleteNamespacedPod({ name, namespace: this.o.namespace, gracePeriodSeconds: 0 }).catch((err) => {
      if (code(err) !== 404) throw err;
    });
    // Deletion is asynchronous: wait until the pod is really gone, so "hibernated" is true.
    const deadline = Date.now() + 60_000;
    while ((await this.readPod(name)) && Date.now() < deadline) await sleep(200);
  }

  private async waitReady(sessionId: string, progress: Progress): Promise<CommandResult> {
    const name = this.objectName(sessionId);
    progress('waiting for the pod to be ready');
    const deadline = Date.now() + this.o.podReadyTimeoutMs;
    for (;;) {
      const pod = await this.readPod(name);
      if (!pod) throw new DriverError(`pod ${name} disappeared while starting`, true);
      if (pod.status?.phase === 'Failed') throw new DriverError(`pod ${name} failed: ${pod.status.message ?? pod.status.reason ?? 'unknown'}`, false);
      if (isReady(pod) && pod.status?.podIP) {
        return {
          state: 'running',
          vnc: { host: pod.status.podIP, port: Number(pod.metadata?.annotations?.[VNC_PORT_ANNOTATION] ?? 5900) },
          platform_metadata: { pod: name, service: name, namespace: this.o.namespace, node: pod.spec?.nodeName ?? null },
        };
      }
      if (Date.now() > deadline) throw new DriverError(`pod ${name} was not ready within ${this.o.podReadyTimeoutMs} ms`, true);
      await sleep(200);
    }
  }
}

function isReady(pod: V1Pod): boolean {
  return pod.status?.phase === 'Running' && (pod.status.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
}

function apiMessage(err: unknown): string {
  const body = (err as { body?: unknown }).body;
  try {
    const parsed = typeof body === 'string' ? JSON.parse(body) : body;
    if (parsed && typeof parsed === 'object' && 'message' in parsed) return String((parsed as { message: unknown }).message);
  } catch {
    // not JSON
  }
  return (err as Error).message;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
