-- version: v2.0.3-v1-users-catalog
-- StreamSpace v2.0.3: v2 reads v1's users and catalog as v1 wrote them.
--
--   * users.id: in v1.0.0 a VARCHAR(255) uuid string (the seeded admin's is 'admin') and
--     sessions.user_id REFERENCES it. v2 now does the same: sessions.user_id holds users.id, never
--     the username. Where users.id is text, v2's inserts get a uuid default (v1 always supplies
--     its own ids, so v1 is unaffected).
--   * users.active: v1.0.0 has it; older schemas get it (disabled users cannot log in).
--   * template_catalog: one view of the catalog v2 serves, v2's own `templates` first, then v1's
--     `catalog_templates` (the repository sync cache; manifest is the whole Template YAML as v1's
--     encoding/json wrote it, with Go field names: activities/templates.ts manifestSpec reads it).
--     Nothing is copied.
-- Only additive schema changes; no v1 row is written. Idempotent.

DO $$
DECLARE
    id_type text;
    id_default text;
BEGIN
    SELECT format_type(a.atttypid, a.atttypmod), pg_get_expr(d.adbin, d.adrelid)
      INTO id_type, id_default
      FROM pg_catalog.pg_attribute a
      LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = to_regclass('users') AND a.attname = 'id' AND NOT a.attisdropped;
    IF id_type IS NOT NULL AND id_type <> 'uuid' AND id_default IS NULL THEN
        ALTER TABLE users ALTER COLUMN id SET DEFAULT gen_random_uuid()::text;
    END IF;
END $$;

ALTER TABLE users ADD COLUMN IF NOT EXISTS active BOOLEAN DEFAULT true;

-- Sessions v2 itself created before this version stored the username in user_id; they are the
-- rows with a workflow_id (v1 never writes one). v1's rows are not touched.
UPDATE sessions s
   SET user_id = u.id::text
  FROM users u
 WHERE s.workflow_id IS NOT NULL
   AND s.user_id = u.username
   AND s.user_id <> u.id::text;

DO $$
BEGIN
    IF to_regclass('catalog_templates') IS NOT NULL THEN
        EXECUTE $view$
        CREATE OR REPLACE VIEW template_catalog AS
        SELECT t.name, t.display_name, t.description, t.category, t.icon, t.manifest, 'v2'::text AS source
          FROM templates t
        UNION ALL
        SELECT c.name, c.display_name, c.description, c.category, c.icon_url AS icon,
               c.manifest, 'v1-catalog'::text AS source
          FROM (SELECT DISTINCT ON (name) * FROM catalog_templates
                 WHERE name IS NOT NULL AND manifest IS NOT NULL
                 ORDER BY name, id) c
         WHERE NOT EXISTS (SELECT 1 FROM templates t2 WHERE t2.name = c.name)
        $view$;
    ELSE
        EXECUTE $view$
        CREATE OR REPLACE VIEW template_catalog AS
        SELECT t.name, t.display_name, t.description, t.category, t.icon, t.manifest, 'v2'::text AS source
          FROM templates t
        $view$;
    END IF;
END $$;

COMMENT ON VIEW template_catalog IS 'Templates v2 serves: its own (templates) and v1''s catalog (catalog_templates)';

INSERT INTO schema_migrations (version) VALUES ('v2.0.3-v1-users-catalog')
ON CONFLICT (version) DO NOTHING;
