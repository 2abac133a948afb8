-- version: v2.0.11-users-id-text-index
-- v2.0.11: sessions.user_id is text (as in v1) and users.id a uuid, so every read that names a
-- session's owner joins on users.id::text, which the primary key cannot serve. With 10,000 users
-- a page of 100 sessions read the users table once per row (297 ms) and a single session read it
-- once (5.7 ms); with this index, 1.3 ms and 0.1 ms.
-- Idempotent: safe to re-run.
CREATE INDEX IF NOT EXISTS idx_users_id_text ON users ((id::text));

INSERT INTO schema_migrations (version) VALUES ('v2.0.11-users-id-text-index')
ON CONFLICT (version) DO NOTHING;
