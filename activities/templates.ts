/**
 * Turns a v1 Template manifest (the catalog's JSONB; see DESIGN "v1 formats") into the spec an
 * agent needs. Invalid templates fail here, before any agent creates anything.
 */
import type { TemplateSpec } from '../protocol/messages';

export interface TemplateManifest {
  displayName?: string;
  description?: string;
  category?: string;
  icon?: string;
  baseImage?: string;
  defaultResources?: { memory?: string; cpu?: string };
  ports?: Array<{ name?: string; containerPort?: number }>;
  env?: Array<{ name?: string; value?: string }>;
  volumeMounts?: Array<{ name?: string; mountPath?: string }>;
  vnc?: { enabled?: boolean; port?: number; protocol?: string };
  kasmvnc?: { enabled?: boolean; port?: number };
  capabilities?: string[];
  tags?: string[];
}

export class InvalidTemplateError extends Error {}

/**
 * The Template spec inside whatever a catalog row holds: v2's own manifests are the spec itself
 * (camelCase); v1's `catalog_templates.manifest` is the whole Template YAML as v1's repository
 * sync marshalled it with encoding/json, and its Go struct has yaml tags only, so the keys are Go
 * field names (`Spec.BaseImage`, `Spec.VNC.Port`, `Ports[].ContainerPort`; Env and VolumeMounts
 * are maps and keep their YAML keys). Both come out as the camelCase spec.
 */
export function manifestSpec(raw: unknown): TemplateManifest {
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) return {};
  const o = raw as Record<string, any>;
  const spec = (o.spec ?? o.Spec ?? o) as Record<string, any>;
  if (!spec || typeof spec !== 'object') return {};
  const pick = (k: string) => spec[k] ?? spec[k.charAt(0).toUpperCase() + k.slice(1)];
  const vnc = spec.vnc ?? spec.VNC;
  const kasm = spec.kasmvnc ?? spec.KasmVNC;
  const flag = (x: Record<string, any> | null | undefined) =>
    x && typeof x === 'object' ? { enabled: x.enabled ?? x.Enabled, port: x.port ?? x.Port, protocol: x.protocol ?? x.Protocol } : undefined;
  const out: TemplateManifest = {
    displayName: pick('displayName'),
    description: pick('description'),
    category: pick('category'),
    icon: pick('icon'),
    baseImage: pick('baseImage'),
    defaultResources: pick('defaultResources') ?? undefined,
    ports: Array.isArray(pick('ports'))
      ? pick('ports').map((p: Record<string, any>) => ({ name: p?.name ?? p?.Name, containerPort: p?.containerPort ?? p?.ContainerPort }))
      : undefined,
    env: Array.isArray(pick('env')) ? pick('env') : undefined,
    volumeMounts: Array.isArray(pick('volumeMounts')) ? pick('volumeMounts') : undefined,
    vnc: flag(vnc),
    kasmvnc: flag(kasm),
    capabilities: Array.isArray(pick('capabilities')) ? pick('capabilities') : undefined,
    tags: Array.isArray(pick('tags')) ? pick('tags') : undefined,
  };
  for (const k of Object.keys(out) as Array<keyof TemplateManifest>) if (out[k] === undefined || out[k] === null || out[k] === '') delete out[k];
  return out;
}

const CPU = /^(\d+(\.\d+)?)(m)?$/;
const MEMORY = /^(\d+(\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/;

export function templateToSpec(name: string, manifest: TemplateManifest): TemplateSpec {
  const bad = (why: string) => new InvalidTemplateError(`template "${name}" ${why}`);
  if (!manifest || typeof manifest !== 'object') throw bad('has no manifest');
  if (typeof manifest.baseImage !== 'string' || !manifest.baseImage.trim()) throw bad('has no baseImage');
  const res = manifest.defaultResources ?? {};
  if (res.cpu !== undefined && (typeof res.cpu !== 'string' || !CPU.test(res.cpu) || parseFloat(res.cpu) <= 0))
    throw bad(`has an invalid cpu request "${res.cpu}" (expected e.g. 1000m or 2)`);
  if (res.memory !== undefined && (typeof res.memory !== 'string' || !MEMORY.test(res.memory) || parseFloat(res.memory) <= 0))
    throw bad(`has an invalid memory request "${res.memory}" (expected e.g. 2Gi or 512Mi)`);
  const vncPort =
    (manifest.vnc?.enabled !== false ? manifest.vnc?.port : undefined) ??
    (manifest.kasmvnc?.enabled ? manifest.kasmvnc.port : undefined) ??
    manifest.ports?.find((p) => p.name === 'vnc')?.containerPort ??
    5900;
  if (!Number.isInteger(vncPort) || vncPort < 1 || vncPort > 65535) throw bad(`has an invalid VNC port ${vncPort}`);
  const env: Record<string, string> = {};
  for (const e of manifest.env ?? []) {
    if (!e || typeof e.name !== 'string' || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(e.name)) throw bad(`has an invalid env entry ${JSON.stringify(e)}`);
    env[e.name] = String(e.value ?? '');
  }
  const home = manifest.volumeMounts?.find((m) => m.name === 'user-home')?.mountPath ?? '/config';
  if (!home.startsWith('/')) throw bad(`has a relative home mount path "${home}"`);
  return {
    name,
    image: manifest.baseImage.trim(),
    vnc_port: vncPort,
    env,
    resources: { ...(res.cpu ? { cpu: res.cpu } : {}), ...(res.memory ? { memory: res.memory } : {}) },
    home_mount: home,
  };
}
