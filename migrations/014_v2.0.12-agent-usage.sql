-- version: v2.0.12-agent-usage
-- v2.0.12: what a placement counts on an agent, read in the statement that locks the agent.
-- A placement locks its candidate agents (FOR NO KEY UPDATE), then counts the sessions on each.
-- The count must see every placement committed while it waited for the lock, which a query's
-- own snapshot (taken before the wait) does not; so it took a second statement, one more round
-- trip while every other placement on that agent queues behind the lock. A VOLATILE function
-- takes a fresh snapshot for each query it runs, so called on each row as it leaves the locking
-- subquery it counts what is committed once that agent is held:
--   SELECT l.*, streamspace_agent_usage(l.id, $session) FROM (SELECT ... FOR NO KEY UPDATE) l
-- One row per kind of session on the agent (cpu, memory, template) with its count and the
-- template's manifest, which activities/placement.ts turns into resources (db/quota.ts
-- sessionResources). p_except: the session being placed, not counted.
-- Idempotent: safe to re-run.
CREATE OR REPLACE FUNCTION streamspace_agent_usage(p_agent uuid, p_except text) RETURNS jsonb
VOLATILE LANGUAGE plpgsql AS $$
DECLARE
    used jsonb;
BEGIN
    SELECT COALESCE(jsonb_agg(jsonb_build_object('n', g.n, 'cpu', g.cpu, 'memory', g.memory, 'manifest', t.manifest)), '[]'::jsonb)
      INTO used
      FROM (SELECT s.cpu, s.memory, s.template_name, count(*)::int AS n
              FROM sessions s
             WHERE s.agent_id = p_agent AND s.state IN ('pending', 'running', 'terminating') AND s.id IS DISTINCT FROM p_except
             GROUP BY s.cpu, s.memory, s.template_name) g
      LEFT JOIN template_catalog t ON t.name = g.template_name;
    RETURN used;
END
$$;

INSERT INTO schema_migrations (version) VALUES ('v2.0.12-agent-usage')
ON CONFLICT (version) DO NOTHING;
