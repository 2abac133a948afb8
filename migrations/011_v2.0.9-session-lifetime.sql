-- version: v2.0.9-session-lifetime
-- v2.0.9: idle hibernation and the maximum session duration act on v1's own columns
-- (sessions.idle_timeout, default '30m'; sessions.max_session_duration, default '8h';
-- sessions.last_activity, the last keyboard or mouse input the gateway saw on the session's VNC
-- tunnel). New: sessions.running_since, when the session last became running (the idle and
-- duration clocks start there; a hibernated session holds nothing and is not timed).
-- Idempotent: safe to re-run.
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS running_since TIMESTAMP;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS idle_timeout VARCHAR(50) DEFAULT '30m';
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS max_session_duration VARCHAR(50) DEFAULT '8h';
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS last_activity TIMESTAMP;

INSERT INTO schema_migrations (version) VALUES ('v2.0.9-session-lifetime')
ON CONFLICT (version) DO NOTHING;
