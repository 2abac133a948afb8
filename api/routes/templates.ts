import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { manifestSpec } from '../../activities/templates';
import { HttpError } from '../errors';
import { ErrorSchema, TemplateSchema } from '../schemas';
import { ManifestProblem, parseTemplateSource } from '../templates/manifest';

const TEMPLATE_NAME = '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$';
/** A v1 Template manifest as text (YAML or JSON). */
const Source = Type.String({ minLength: 1, maxLength: 256 * 1024, description: 'a v1 Template manifest (YAML or JSON text)' });
/** v2's own form: the Template spec as JSON. */
const SpecManifest = Type.Object({ displayName: Type.String({ minLength: 1 }) }, { additionalProperties: true });

const CreateTemplate = Type.Union([
  Type.Object({ name: Type.String({ pattern: TEMPLATE_NAME }), manifest: SpecManifest }, { additionalProperties: false }),
  Type.Object({ source: Source }, { additionalProperties: false }),
]);
const UpdateTemplate = Type.Union([
  Type.Object({ manifest: SpecManifest }, { additionalProperties: false }),
  Type.Object({ source: Source }, { additionalProperties: false }),
]);
const NameParams = Type.Object({ name: Type.String({ pattern: TEMPLATE_NAME }) });
const Validation = Type.Object({
  valid: Type.Boolean(),
  name: { ...Type.String(), nullable: true },
  errors: Type.Array(Type.Object({ path: Type.String(), line: { ...Type.Integer(), nullable: true }, message: Type.String() })),
});

interface TemplateRow {
  name: string;
  display_name: string;
  description: string | null;
  category: string | null;
  icon: string | null;
  manifest: Record<string, unknown>;
  source: string;
}

/** A refused manifest: 400 with every problem (path, line, message) for the editor. */
class ManifestRefused extends HttpError {
  constructor(readonly errors: ManifestProblem[]) {
    super(400, `invalid Template manifest: ${errors.map((e) => `${e.line ? `line ${e.line}: ` : ''}${e.message}`).join('; ')}`);
  }
}

function present(t: TemplateRow) {
  const spec = manifestSpec(t.manifest);
  const res = spec.defaultResources;
  return {
    name: t.name,
    display_name: t.display_name,
    description: t.description,
    category: t.category,
    icon: t.icon,
    image: spec.baseImage ?? null,
    tags: spec.tags ?? [],
    source: t.source,
    resources: res ? { cpu: res.cpu ?? null, memory: res.memory ?? null } : null,
  };
}

/** {name, manifest} (v2's spec form) or {source} (a v1 Template manifest) → what the row holds. */
function fromBody(body: { name?: string; manifest?: Record<string, unknown>; source?: string }, name?: string) {
  if (body.source !== undefined) {
    const parsed = parseTemplateSource(body.source);
    if (parsed.errors.length || !parsed.manifest || !parsed.name) throw new ManifestRefused(parsed.errors);
    if (name && parsed.name !== name) throw new ManifestRefused([{ path: 'metadata.name', line: null, message: `metadata.name must stay "${name}"` }]);
    return { name: parsed.name, manifest: parsed.manifest };
  }
  return { name: (name ?? body.name)!, manifest: body.manifest! };
}

export async function templateRoutes(app: FastifyInstance): Promise<void> {
  const secured = { tags: ['templates'], security: [{ bearer: [] }] };
  const errors = { 400: ErrorSchema, 401: ErrorSchema, 403: ErrorSchema, 404: ErrorSchema, 409: ErrorSchema };
  // The problems travel with the 400 (the gateway's handler sends only statusCode/error/message).
  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof ManifestRefused) return reply.status(400).send({ statusCode: 400, error: 'Bad Request', message: err.message, errors: err.errors });
    throw err;
  });

  app.get('/api/v1/templates', { onRequest: app.authenticate, schema: { ...secured, response: { 200: Type.Array(TemplateSchema) } } }, async () => {
    const r = await app.deps.pool.query<TemplateRow>(
      'SELECT name, display_name, description, category, icon, manifest, source FROM template_catalog ORDER BY name',
    );
    return r.rows.map(present);
  });

  app.get<{ Params: { name: string } }>(
    '/api/v1/templates/:name',
    {
      onRequest: app.authenticate,
      schema: {
        ...secured,
        params: NameParams,
        response: { 200: Type.Intersect([TemplateSchema, Type.Object({ manifest: Type.Object({}, { additionalProperties: true }) })]), ...errors },
      },
    },
    async (req) => {
      const r = await app.deps.pool.query<TemplateRow>(
        'SELECT name, display_name, description, category, icon, manifest, source FROM template_catalog WHERE name = $1',
        [req.params.name],
      );
      if (!r.rows[0]) throw new HttpError(404, `template "${req.params.name}" not found`);
      return { ...present(r.rows[0]), manifest: r.rows[0].manifest };
    },
  );

  app.post<{ Body: { source: string } }>(
    '/api/v1/templates/validate',
    {
      onRequest: app.requireAdmin,
      schema: { ...secured, body: Type.Object({ source: Source }, { additionalProperties: false }), response: { 200: Validation } },
    },
    async (req) => {
      const parsed = parseTemplateSource(req.body.source);
      return { valid: parsed.errors.length === 0, name: parsed.name, errors: parsed.errors };
    },
  );

  app.post<{ Body: { name?: string; manifest?: Record<string, unknown>; source?: string } }>(
    '/api/v1/templates',
    { onRequest: app.requireAdmin, schema: { ...secured, body: CreateTemplate, response: { 201: Type.Object({ name: Type.String() }), ...errors } } },
    async (req, reply) => {
      const { name, manifest } = fromBody(req.body);
      if (await app.deps.pool.query('SELECT 1 FROM template_catalog WHERE name = $1', [name]).then((r) => r.rowCount))
        throw new HttpError(409, `template "${name}" already exists (PUT /api/v1/templates/${name} edits it)`);
      const spec = manifestSpec(manifest);
      const r = await app.deps.pool.query(
        `INSERT INTO templates (name, display_name, description, category, icon, manifest)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING RETURNING name`,
        [name, spec.displayName, spec.description ?? null, spec.category ?? null, spec.icon ?? null, manifest],
      );
      if (!r.rowCount) throw new HttpError(409, `template "${name}" already exists`);
      app.deps.log.info('template added', { template: name, by: req.user?.sub });
      return reply.status(201).send({ name });
    },
  );

  // Editing a template of v1's catalog writes a v2 template of the same name, which the catalog
  // serves from then on; v1's row stays as v1 wrote it.
  app.put<{ Params: { name: string }; Body: { manifest?: Record<string, unknown>; source?: string } }>(
    '/api/v1/templates/:name',
    { onRequest: app.requireAdmin, schema: { ...secured, params: NameParams, body: UpdateTemplate, response: { 200: TemplateSchema, ...errors } } },
    async (req) => {
      const { name, manifest } = fromBody(req.body, req.params.name);
      if (!(await app.deps.pool.query('SELECT 1 FROM template_catalog WHERE name = $1', [name]).then((r) => r.rowCount)))
        throw new HttpError(404, `template "${name}" not found (POST /api/v1/templates adds it)`);
      const spec = manifestSpec(manifest);
      await app.deps.pool.query(
        `INSERT INTO templates (name, display_name, description, category, icon, manifest) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (name) DO UPDATE SET display_name = EXCLUDED.display_name, description = EXCLUDED.description,
           category = EXCLUDED.category, icon = EXCLUDED.icon, manifest = EXCLUDED.manifest, updated_at = NOW()`,
        [name, spec.displayName, spec.description ?? null, spec.category ?? null, spec.icon ?? null, manifest],
      );
      app.deps.log.info('template edited', { template: name, by: req.user?.sub });
      const r = await app.deps.pool.query<TemplateRow>(
        'SELECT name, display_name, description, category, icon, manifest, source FROM template_catalog WHERE name = $1',
        [name],
      );
      return present(r.rows[0]);
    },
  );
}
