/**
 * v1 → v2 conversion of Session and Template records (CRDs or v1 database rows), with a reason for
 * every row that cannot be imported. Shared by the migration workflow and POST /sessions/bulk-import.
 */
import type { V1Object } from './kube';

export interface V2SessionRecord {
  id: string;
  user: string;
  template: string;
  state: 'hibernated' | 'terminated';
  platform: 'kubernetes';
  memory: string | null;
  cpu: string | null;
  persistentHome: boolean;
  idleTimeout: string;
  maxSessionDuration: string;
  tags: string[];
  metadata: Record<string, unknown>;
}

export type Converted = { ok: true; record: V2SessionRecord } | { ok: false; reason: string };

const NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;
const CPU = /^(\d+(\.\d+)?)(m)?$/;
const MEMORY = /^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/;
const STATES = new Set(['running', 'hibernated', 'terminated']);

/**
 * A v1 session becomes a v2 record on the kubernetes platform. Running and hibernated v1 sessions
 * arrive hibernated (v1 still runs the pod until the cut-over; the user wakes it on v2 and keeps
 * the same home PVC); terminated ones are kept as history.
 */
export function convertSession(src: { crd?: V1Object; row?: Record<string, unknown> }, knownTemplates: Set<string>): Converted {
  const crd = src.crd;
  const row = src.row ?? {};
  const spec = (crd?.spec ?? {}) as Record<string, any>;
  const status = (crd?.status ?? {}) as Record<string, any>;
  const id = String(crd?.metadata?.name ?? row.id ?? '');
  if (!id || !NAME.test(id)) return { ok: false, reason: `invalid id "${id}"` };
  const user = crd ? spec.user : row.user_id;
  if (typeof user !== 'string' || !user) return { ok: false, reason: 'missing spec.user' };
  const template = crd ? spec.template : row.template_name;
  if (typeof template !== 'string' || !template) return { ok: false, reason: 'missing spec.template' };
  if (!knownTemplates.has(template)) return { ok: false, reason: `unknown template "${template}"` };
  const res = (spec.resources ?? {}) as Record<string, any>;
  const memory = res.memory ?? res.requests?.memory ?? row.memory ?? null;
  const cpu = res.cpu ?? res.requests?.cpu ?? row.cpu ?? null;
  if (memory !== null && (typeof memory !== 'string' || !MEMORY.test(memory))) return { ok: false, reason: `invalid resources.memory "${memory}"` };
  if (cpu !== null && (typeof cpu !== 'string' || !CPU.test(String(cpu)))) return { ok: false, reason: `invalid resources.cpu "${cpu}"` };
  const v1State = String(spec.state ?? (status.phase ? String(status.phase).toLowerCase() : undefined) ?? row.state ?? row.status ?? 'running');
  if (!STATES.has(v1State)) return { ok: false, reason: `unknown v1 state "${v1State}"` };
  const tags = Array.isArray(spec.tags) ? spec.tags.filter((t: unknown) => typeof t === 'string') : [];
  return {
    ok: true,
    record: {
      id,
      user,
      template,
      state: v1State === 'terminated' ? 'terminated' : 'hibernated',
      platform: 'kubernetes',
      memory,
      cpu: cpu === null ? null : String(cpu),
      persistentHome: spec.persistentHome ?? row.persistent_home ?? true,
      idleTimeout: String(spec.idleTimeout ?? row.idle_timeout ?? '30m'),
      maxSessionDuration: String(spec.maxSessionDuration ?? row.max_session_duration ?? '8h'),
      tags: [...new Set([...tags, 'imported-v1'])],
      metadata: {
        source: 'v1.x',
        v1_state: v1State,
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
