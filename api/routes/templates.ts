import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { manifestSpec } from '../../activities/templates';
import { HttpError } from '../app';

const CreateTemplate = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' }),
    manifest: Type.Object({ displayName: Type.String({ minLength: 1 }) }, { additionalProperties: true }),
  },
  { additionalProperties: false },
);

interface TemplateRow {
  name: string;
  display_name: string;
  description: string | null;
  category: string | null;
  icon: string | null;
  manifest: Record<string, unknown>;
  source: string;
}

export async function templateRoutes(app: FastifyInstance): Promise<void> {
  app.get('/api/v1/templates', { onRequest: app.authenticate, schema: { tags: ['templates'], security: [{ bearer: [] }] } }, async () => {
    const r = await app.deps.pool.query<TemplateRow>(
      'SELECT name, display_name, description, category, icon, manifest, source FROM template_catalog ORDER BY name',
    );
    return r.rows.map((t) => {
      const spec = manifestSpec(t.manifest);
      return {
        name: t.name,
        display_name: t.display_name,
        description: t.description,
        category: t.category,
        icon: t.icon,
        image: spec.baseImage ?? null,
        tags: spec.tags ?? [],
        source: t.source,
      };
    });
  });

  app.post<{ Body: { name: string; manifest: Record<string, unknown> & { displayName: string } } }>(
    '/api/v1/templates',
    { onRequest: app.requireAdmin, schema: { tags: ['templates'], security: [{ bearer: [] }], body: CreateTemplate } },
    async (req, reply) => {
      const { name, manifest } = req.body;
      if (await app.deps.pool.query('SELECT 1 FROM template_catalog WHERE name = $1', [name]).then((r) => r.rowCount))
        throw new HttpError(409, `template "${name}" already exists`);
      const r = await app.deps.pool.query(
        `INSERT INTO templates (name, display_name, description, category, icon, manifest)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING RETURNING name`,
        [name, manifest.displayName, manifest.description ?? null, manifest.category ?? null, manifest.icon ?? null, manifest],
      );
      if (!r.rowCount) throw new HttpError(409, `template "${name}" already exists`);
      return reply.status(201).send({ name });
    },
  );
}
