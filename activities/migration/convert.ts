/**
 * v1 → v2 conversion of Session and Template records (CRDs or v1 database rows), with a reason for
 * every row that cannot be imported. Shared by the migration workflow and POST /sessions/bulk-import.
 */
import type { Platform } from '../../protocol/messages';
import type { V1Object } from './kube';

export interface V2SessionRecord {
  id: string;
  /**
   * Who owns it, as v1 wrote it: the Session CRD's spec.user or sessions.user_id. In v1.0.0 that is
   * users.id (a uuid string); older installs and hand-made CRDs carry the username. store.ts
   * resolves it to users.id.
   */
  owner: string;
  template: string;
  state: 'hibernated' | 'terminated';
  platform: Platform;
  memory: string | null;
  cpu: string | null;
  persistentHome: boolean;
  idleTimeout: string;
  maxSessionDuration: string;
  tags: string[];
  /** v1's home for the session: PVC `home-<spec.user>` (the v1 controller's name), kept on v2. */
  homeVolume: string;
  /** Provenance; with store.ts's v1_* values, what a rollback restores. */
  metadata: Record<string, unknown>;
}

export type Converted = { ok: true; record: V2SessionRecord } | { ok: false; reason: string };

export interface ConvertOptions {
  /** Where imported sessions run when woken on v2 (v1 was Kubernetes-only): default kubernetes. */
  platform?: Platform;
}

const NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;
const CPU = /^(\d+(\.\d+)?)(m)?$/;
const MEMORY = /^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/;
/** Every state v1 writes (sessions.go), and what it becomes on v2. */
const STATES: Record<string, 'hibernated' | 'terminated'> = {
  pending: 'hibernated',
  running: 'hibernated',
  hibernated: 'hibernated',
  terminated: 'terminated',
  failed: 'terminated',
  deleted: 'terminated', // v1's soft delete
};

/**
 * A v1 session becomes a v2 record. Pending, running and hibernated v1 sessions arrive hibernated
 * (v1 runs the pod until the cut-over; the user wakes it on v2 with the same home volume);
 * terminated, failed and deleted ones are kept as history.
 */
export function convertSession(src: { crd?: V1Object; row?: Record<string, unknown> }, knownTemplates: Set<string>, opts: ConvertOptions = {}): Converted {
  const crd = src.crd;
  const row = src.row ?? {};
  const spec = (crd?.spec ?? {}) as Record<string, any>;
  const status = (crd?.status ?? {}) as Record<string, any>;
  const id = String(crd?.metadata?.name ?? row.id ?? '');
  if (!id || !NAME.test(id)) return { ok: false, reason: `invalid id "${id}"` };
  const owner = crd ? spec.user : row.user_id;
  if (typeof owner !== 'string' || !owner) return { ok: false, reason: 'missing spec.user' };
  if (!NAME.test(owner.toLowerCase())) return { ok: false, reason: `invalid user "${owner}"` };
  const template = crd ? spec.template : row.template_name;
  if (typeof template !== 'string' || !template) return { ok: false, reason: 'missing spec.template' };
  if (!knownTemplates.has(template)) return { ok: false, reason: `unknown template "${template}"` };
  const res = (spec.resources ?? {}) as Record<string, any>;
  const memory = res.memory ?? res.requests?.memory ?? row.memory ?? null;
  const cpu = res.cpu ?? res.requests?.cpu ?? row.cpu ?? null;
  if (memory !== null && (typeof memory !== 'string' || !MEMORY.test(memory))) return { ok: false, reason: `invalid resources.memory "${memory}"` };
  if (cpu !== null && (typeof cpu !== 'string' || !CPU.test(String(cpu)))) return { ok: false, reason: `invalid resources.cpu "${cpu}"` };
  const rowState = row.state ?? row.status;
  // v1's API writes the row on every change (and soft-deletes there): where v1 has a row, its
  // state is the latest word; a CRD alone says what it asks for (spec) or shows (status).
  const v1State = String(rowState ?? spec.state ?? (status.phase ? String(status.phase).toLowerCase() : undefined) ?? 'running');
  const state = STATES[v1State];
  if (!state) return { ok: false, reason: `unknown v1 state "${v1State}"` };
  const tags = Array.isArray(spec.tags) ? spec.tags.filter((t: unknown) => typeof t === 'string') : [];
  return {
    ok: true,
    record: {
      id,
      owner,
      template,
      state,
      platform: opts.platform ?? 'kubernetes',
      memory,
      cpu: cpu === null ? null : String(cpu),
      persistentHome: spec.persistentHome ?? row.persistent_home ?? true,
      idleTimeout: String(spec.idleTimeout ?? row.idle_timeout ?? '30m'),
      maxSessionDuration: String(spec.maxSessionDuration ?? row.max_session_duration ?? '8h'),
      tags: [...new Set([...tags, 'imported-v1'])],
      homeVolume: `home-${owner}`.toLowerCase(),
      metadata: {
        source: 'v1.x',
        // For a session v1 has no row for (a CRD only): the import inserts it. Where v1 has a row,
        // store.ts records the row's own v1_state, v1_platform and v1_user_id instead.
        v1_state: rowState === undefined ? v1State : rowState,
        v1_inserted: true,
        v1_phase: status.phase ?? null,
        v1_pod: status.podName ?? row.pod_name ?? null,
        v1_namespace: crd?.metadata?.namespace ?? row.namespace ?? null,
        v1_url: status.url ?? row.url ?? null,
      },
    },
  };
}

export function convertTemplate(crd: V1Object): { ok: true; name: string; manifest: Record<string, any> } | { ok: false; reason: string } {
  const name = String(crd.metadata?.name ?? '');
  const spec = (crd.spec ?? {}) as Record<string, any>;
  if (!name || !NAME.test(name)) return { ok: false, reason: `invalid name "${name}"` };
  if (typeof spec.displayName !== 'string' || !spec.displayName) return { ok: false, reason: 'missing spec.displayName' };
  if (typeof spec.baseImage !== 'string' || !spec.baseImage) return { ok: false, reason: 'missing spec.baseImage' };
  return { ok: true, name, manifest: spec };
}
