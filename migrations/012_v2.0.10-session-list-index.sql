-- version: v2.0.10-session-list-index
-- v2.0.10: the session list's default order (newest first: created_at, then id, NULLs folded as
-- the API sorts them) is an index scan, so a page costs the same with 10,000 sessions as with 10
-- (it was a sort of every row, with each row's open command looked up first).
-- Idempotent: safe to re-run.
CREATE INDEX IF NOT EXISTS idx_sessions_list_created ON sessions ((COALESCE(created_at, 'epoch'::timestamp)), id);

INSERT INTO schema_migrations (version) VALUES ('v2.0.10-session-list-index')
ON CONFLICT (version) DO NOTHING;
