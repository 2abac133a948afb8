/**
 * A v1 Template manifest as an operator writes it (YAML or JSON text: apiVersion
 * stream.space/v1alpha1, kind Template, metadata.name, spec.{displayName, baseImage, ...}):
 * parsed, then checked field by field. Every problem is reported with its path and line so the
 * console can show it next to the text.
 */
import { isMap, isSeq, LineCounter, parseDocument } from 'yaml';
import { parseLifetime } from '../../config/env';

export interface ManifestProblem {
  path: string;
  line: number | null;
  message: string;
}

export interface ParsedTemplate {
  name: string | null;
  manifest: Record<string, unknown> | null;
  errors: ManifestProblem[];
}

const NAME = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const IMAGE = /^[a-zA-Z0-9][a-zA-Z0-9._\-/:@]{0,511}$/;
const MEMORY = /^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?$/;
const CPU = /^([0-9]+m|[0-9]+(\.[0-9]+)?)$/;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_.-]*$/;
export const TEMPLATE_API_VERSION = 'stream.space/v1alpha1';

export function parseTemplateSource(source: string): ParsedTemplate {
  const lines = new LineCounter();
  const doc = parseDocument(source, { lineCounter: lines, prettyErrors: true, uniqueKeys: true });
  const errors: ManifestProblem[] = [];
  if (doc.errors.length) {
    for (const e of doc.errors) errors.push({ path: '', line: e.linePos?.[0]?.line ?? null, message: e.message.split('\n')[0] });
    return { name: null, manifest: null, errors };
  }
  const lineOf = (path: Array<string | number>): number | null => {
    for (let p = path; ; p = p.slice(0, -1)) {
      const node = p.length ? doc.getIn(p, true) : doc.contents;
      const range = (node as { range?: [number, number, number] } | null)?.range;
      if (range) return lines.linePos(range[0]).line;
      if (!p.length) return null;
    }
  };
  const problem = (path: Array<string | number>, message: string) =>
    errors.push({
      path: path
        .map((k) => (typeof k === 'number' ? `[${k}]` : `.${k}`))
        .join('')
        .replace(/^\./, ''),
      line: lineOf(path),
      message,
    });

  const root = doc.toJS() as unknown;
  if (!isMap(doc.contents) || !root || typeof root !== 'object') {
    problem([], 'a Template manifest is a mapping (apiVersion, kind, metadata, spec)');
    return { name: null, manifest: null, errors };
  }
  const m = root as Record<string, any>;
  if (m.apiVersion !== TEMPLATE_API_VERSION) problem(['apiVersion'], `apiVersion must be "${TEMPLATE_API_VERSION}"`);
  if (m.kind !== 'Template') problem(['kind'], 'kind must be "Template"');
  const name = m.metadata?.name;
  if (typeof name !== 'string' || !NAME.test(name))
    problem(['metadata', 'name'], 'metadata.name is required: lower-case letters, digits and "-", at most 63, starting and ending with a letter or digit');
  const spec = m.spec;
  if (!spec || typeof spec !== 'object' || Array.isArray(spec)) {
    problem(['spec'], 'spec is required (displayName, baseImage, ...)');
    return { name: typeof name === 'string' ? name : null, manifest: null, errors };
  }
  const str = (k: string, opts: { required?: boolean; max?: number; pattern?: RegExp; what?: string } = {}) => {
    const v = spec[k];
    if (v === undefined || v === null) {
      if (opts.required) problem(['spec'], `spec.${k} is required`);
      return;
    }
    if (typeof v !== 'string' || (opts.required && !v.trim())) return problem(['spec', k], `spec.${k} must be a${opts.required ? ' non-empty' : ''} string`);
    if (opts.max && v.length > opts.max) problem(['spec', k], `spec.${k} is longer than ${opts.max} characters`);
    if (opts.pattern && !opts.pattern.test(v)) problem(['spec', k], `spec.${k} is not ${opts.what}`);
  };
  str('displayName', { required: true, max: 255 });
  str('baseImage', { required: true, pattern: IMAGE, what: 'an image reference (e.g. lscr.io/linuxserver/firefox:latest)' });
  str('description', { max: 4000 });
  str('category', { max: 100 });
  str('icon', { max: 2048 });
  for (const k of ['idleTimeout', 'maxSessionDuration']) {
    const v = spec[k];
    if (v === undefined || v === null) continue;
    try {
      parseLifetime(String(v), `spec.${k}`);
    } catch {
      problem(['spec', k], `spec.${k} is a duration such as 30m, 8h or 1h30m (0: never)`);
    }
  }
  const r = spec.defaultResources;
  if (r !== undefined && r !== null) {
    if (typeof r !== 'object' || Array.isArray(r)) problem(['spec', 'defaultResources'], 'spec.defaultResources must be a mapping {memory, cpu}');
    else {
      if (r.memory !== undefined && !MEMORY.test(String(r.memory)))
        problem(['spec', 'defaultResources', 'memory'], 'memory is a Kubernetes quantity such as 2Gi or 512Mi');
      if (r.cpu !== undefined && !CPU.test(String(r.cpu))) problem(['spec', 'defaultResources', 'cpu'], 'cpu is a Kubernetes quantity such as 1000m or 2');
    }
  }
  const list = (k: string, each: (v: any, i: number) => void) => {
    const v = spec[k];
    if (v === undefined || v === null) return;
    if (!Array.isArray(v) || !isSeq(doc.getIn(['spec', k], true))) return problem(['spec', k], `spec.${k} must be a list`);
    v.forEach(each);
  };
  const port = (v: unknown) => Number.isInteger(v) && (v as number) >= 1 && (v as number) <= 65535;
  list('ports', (p, i) => {
    if (!p || typeof p !== 'object') return problem(['spec', 'ports', i], 'each port is a mapping {name, containerPort, protocol}');
    if (!port(p.containerPort)) problem(['spec', 'ports', i, 'containerPort'], 'containerPort must be a whole number from 1 to 65535');
    if (p.protocol !== undefined && p.protocol !== 'TCP' && p.protocol !== 'UDP') problem(['spec', 'ports', i, 'protocol'], 'protocol must be TCP or UDP');
  });
  list('env', (e, i) => {
    if (!e || typeof e !== 'object' || typeof e.name !== 'string' || !ENV_NAME.test(e.name))
      return problem(['spec', 'env', i], 'each env entry needs a name (letters, digits, "_"; not starting with a digit)');
    if (e.value !== undefined && typeof e.value !== 'string') problem(['spec', 'env', i, 'value'], 'env values are strings (quote numbers)');
  });
  list('tags', (t, i) => {
    if (typeof t !== 'string' || !t || t.length > 63) problem(['spec', 'tags', i], 'tags are strings of 1 to 63 characters');
  });
  list('capabilities', (t, i) => {
    if (typeof t !== 'string' || !t) problem(['spec', 'capabilities', i], 'capabilities are strings');
  });
  for (const k of ['vnc', 'kasmvnc']) {
    const v = spec[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'object' || Array.isArray(v)) problem(['spec', k], `spec.${k} must be a mapping {enabled, port}`);
    else {
      if (v.enabled !== undefined && typeof v.enabled !== 'boolean') problem(['spec', k, 'enabled'], 'enabled is true or false');
      if (v.port !== undefined && !port(v.port)) problem(['spec', k, 'port'], 'port must be a whole number from 1 to 65535');
    }
  }
  return { name: typeof name === 'string' ? name : null, manifest: errors.length ? null : m, errors };
}
