/** Kubernetes access for the migration: v1 CRDs, Deployments' replicas, CRD definitions. */
import * as k8s from '@kubernetes/client-node';

export const V1_GROUP = 'stream.space';
export const V1_VERSION = 'v1alpha1';

export interface V1Object {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; [k: string]: unknown };
  spec?: Record<string, unknown>;
  status?: Record<string, unknown>;
}

export class Kube {
  readonly kc = new k8s.KubeConfig();
  constructor(kubeconfig?: string) {
    if (kubeconfig) this.kc.loadFromFile(kubeconfig);
    else this.kc.loadFromCluster();
  }

  private get custom() {
    return this.kc.makeApiClient(k8s.CustomObjectsApi);
  }
  private get apps() {
    return this.kc.makeApiClient(k8s.AppsV1Api);
  }
  private get ext() {
    return this.kc.makeApiClient(k8s.ApiextensionsV1Api);
  }

  /** Lists v1 custom resources (sessions or templates) in the namespaces; a missing CRD lists nothing. */
  async listV1(plural: 'sessions' | 'templates', namespaces: string[]): Promise<V1Object[]> {
    const out: V1Object[] = [];
    for await (const page of this.eachV1(plural, namespaces)) out.push(...page);
    return out;
  }

  /**
   * One page of v1 custom resources in one namespace (Kubernetes list `limit`/`continue`; items
   * come sorted by name). A missing CRD is an empty last page. An expired continue token (410)
   * surfaces as `expired: true`: the caller restarts the namespace and skips what it has seen.
   */
  async listV1Page(
    plural: 'sessions' | 'templates',
    namespace: string,
    limit: number,
    cont?: string,
  ): Promise<{ items: V1Object[]; continue?: string; remaining?: number; expired?: boolean }> {
    try {
      const r = (await this.custom.listNamespacedCustomObject({
        group: V1_GROUP,
        version: V1_VERSION,
        namespace,
        plural,
        limit,
        ...(cont ? { _continue: cont } : {}),
      })) as { items?: V1Object[]; metadata?: { continue?: string; remainingItemCount?: number } };
      return { items: r.items ?? [], continue: r.metadata?.continue || undefined, remaining: r.metadata?.remainingItemCount };
    } catch (err) {
      const code = (err as { code?: number }).code;
      if (code === 404) return { items: [] };
      if (code === 410 && cont) {
        // The 410 carries a token that continues from the next key (on the latest snapshot): good
        // enough here, since rows changed meanwhile are picked up by the cut-over's delta imports.
        const body = (err as { body?: unknown }).body;
        const parsed =
          typeof body === 'string' ? (JSON.parse(body || '{}') as { metadata?: { continue?: string } }) : (body as { metadata?: { continue?: string } });
        const next = parsed?.metadata?.continue;
        return next ? { items: [], continue: next } : { items: [], expired: true };
      }
      throw err;
    }
  }

  /** Every object, page by page (for counts and backups; never all in one response). */
  async *eachV1(plural: 'sessions' | 'templates', namespaces: string[], limit = 500): AsyncGenerator<V1Object[]> {
    for (const ns of namespaces) {
      let cont: string | undefined;
      do {
        const page = await this.listV1Page(plural, ns, limit, cont);
        if (page.expired) throw new Error(`listing ${plural} in ${ns}: continue token expired`);
        yield page.items;
        cont = page.continue;
      } while (cont);
    }
  }

  async replicas(ref: string): Promise<number | null> {
    const [namespace, name] = splitRef(ref);
    try {
      const d = await this.apps.readNamespacedDeployment({ name, namespace });
      return d.spec?.replicas ?? 1;
    } catch (err) {
      if ((err as { code?: number }).code === 404) return null;
      throw err;
    }
  }

  /** Sets spec.replicas; returns the previous value (null if the Deployment does not exist). */
  async scale(ref: string, replicas: number): Promise<number | null> {
    const [namespace, name] = splitRef(ref);
    try {
      const d = await this.apps.readNamespacedDeployment({ name, namespace });
      const previous = d.spec?.replicas ?? 1;
      if (previous !== replicas) {
        d.spec = { ...d.spec!, replicas };
        await this.apps.replaceNamespacedDeployment({ name, namespace, body: d });
      }
      return previous;
    } catch (err) {
      if ((err as { code?: number }).code === 404) return null;
      throw err;
    }
  }

  async readDeployment(ref: string): Promise<unknown | null> {
    const [namespace, name] = splitRef(ref);
    return this.apps.readNamespacedDeployment({ name, namespace }).catch((err) => {
      if ((err as { code?: number }).code === 404) return null;
      throw err;
    });
  }

  async readSecret(namespace: string, name: string): Promise<unknown | null> {
    return this.kc
      .makeApiClient(k8s.CoreV1Api)
      .readNamespacedSecret({ name, namespace })
      .catch((err) => {
        if ((err as { code?: number }).code === 404) return null;
        throw err;
      });
  }

  async readCrd(name: string): Promise<k8s.V1CustomResourceDefinition | null> {
    return this.ext.readCustomResourceDefinition({ name }).catch((err) => {
      if ((err as { code?: number }).code === 404) return null;
      throw err;
    });
  }

  async deleteCrd(name: string): Promise<boolean> {
    try {
      await this.ext.deleteCustomResourceDefinition({ name });
      return true;
    } catch (err) {
      if ((err as { code?: number }).code === 404) return false;
      throw err;
    }
  }

  /** Re-creates a CRD (from a backup) and waits until it serves, then its objects. */
  async restoreCrd(crd: k8s.V1CustomResourceDefinition, objects: V1Object[]): Promise<void> {
    const name = crd.metadata!.name!;
    // A CRD being deleted must finish first.
    for (let i = 0; i < 300 && (await this.readCrd(name))?.metadata?.deletionTimestamp; i++) await sleep(100);
    if (!(await this.readCrd(name))) {
      await this.ext.createCustomResourceDefinition({
        body: { apiVersion: crd.apiVersion, kind: crd.kind, metadata: { name, labels: crd.metadata?.labels }, spec: crd.spec },
      });
    }
    for (let i = 0; i < 300; i++) {
      const c = await this.readCrd(name);
      if (c?.status?.conditions?.some((x) => x.type === 'Established' && x.status === 'True')) break;
      await sleep(100);
    }
    const plural = crd.spec.names.plural;
    for (const o of objects) {
      const namespace = o.metadata!.namespace!;
      const body = {
        apiVersion: o.apiVersion,
        kind: o.kind,
        metadata: { name: o.metadata!.name, namespace, labels: o.metadata?.labels, annotations: o.metadata?.annotations },
        spec: o.spec,
      };
      for (let attempt = 0; ; attempt++) {
        try {
          await this.custom.createNamespacedCustomObject({ group: V1_GROUP, version: V1_VERSION, namespace, plural, body });
          if (o.status) {
            const created = (await this.custom.getNamespacedCustomObject({
              group: V1_GROUP,
              version: V1_VERSION,
              namespace,
              plural,
              name: o.metadata!.name!,
            })) as V1Object;
            await this.custom
              .replaceNamespacedCustomObjectStatus({
                group: V1_GROUP,
                version: V1_VERSION,
                namespace,
                plural,
                name: o.metadata!.name!,
                body: { ...created, status: o.status },
              })
              .catch(() => undefined);
          }
          break;
        } catch (err) {
          const code = (err as { code?: number }).code;
          if (code === 409) break; // already restored
          if (code === 404 && attempt < 50) {
            await sleep(100); // the new CRD is not served yet
            continue;
          }
          throw err;
        }
      }
    }
  }
}

export function splitRef(ref: string): [string, string] {
  const i = ref.indexOf('/');
  if (i <= 0) throw new Error(`"${ref}" is not namespace/name`);
  return [ref.slice(0, i), ref.slice(i + 1)];
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
