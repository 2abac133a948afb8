-- version: v2.0.7-console-live
-- v2.0.7: what the web console needs.
--   * sessions.change_seq: a number from one sequence, set on every INSERT and UPDATE of a session
--     row (by v1 or v2). It is the live stream's event id: a console that reconnects asks for the
--     rows changed after the last id it saw.
--   * NOTIFY session_changed <session id> on every session row change and on every status change
--     of one of its agent commands (the transition in progress); NOTIFY agent_changed <agent id>
--     when an agent's status changes (heartbeats alone notify nothing). Listeners batch them.
--   * Keyset indexes for the console's server-side sorted, paged session list, and one for a
--     session's open command.
--   * user_quotas as v1 has it (v1's own table is kept; a fresh v2 install gets the same shape).
-- Idempotent: safe to re-run.
CREATE SEQUENCE IF NOT EXISTS sessions_change_seq;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS change_seq BIGINT;
CREATE INDEX IF NOT EXISTS idx_sessions_change_seq ON sessions (change_seq);
CREATE INDEX IF NOT EXISTS idx_sessions_created_id ON sessions (created_at, id);
CREATE INDEX IF NOT EXISTS idx_sessions_user_created_id ON sessions (user_id, created_at, id);
-- The transition shown next to a session: its newest unfinished command.
CREATE INDEX IF NOT EXISTS idx_agent_commands_open_session ON agent_commands (session_id, created_at) WHERE status IN ('pending', 'sent', 'ack');

CREATE OR REPLACE FUNCTION streamspace_session_changed() RETURNS TRIGGER AS $$
BEGIN
    NEW.change_seq := nextval('sessions_change_seq');
    PERFORM pg_notify('session_changed', NEW.id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS trigger_sessions_change_seq ON sessions;
CREATE TRIGGER trigger_sessions_change_seq
    BEFORE INSERT OR UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION streamspace_session_changed();

CREATE OR REPLACE FUNCTION streamspace_command_changed() RETURNS TRIGGER AS $$
BEGIN
    IF NEW.session_id IS NOT NULL
       AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress) THEN
        PERFORM pg_notify('session_changed', NEW.session_id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS trigger_agent_commands_changed ON agent_commands;
CREATE TRIGGER trigger_agent_commands_changed
    AFTER INSERT OR UPDATE ON agent_commands
    FOR EACH ROW EXECUTE FUNCTION streamspace_command_changed();

CREATE OR REPLACE FUNCTION streamspace_agent_changed() RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status THEN
        PERFORM pg_notify('agent_changed', NEW.agent_id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS trigger_agents_changed ON agents;
CREATE TRIGGER trigger_agents_changed
    AFTER INSERT OR UPDATE ON agents
    FOR EACH ROW EXECUTE FUNCTION streamspace_agent_changed();

-- v1's shape (api/internal/db: user_quotas), for installs that never ran v1. v1 references
-- users(id) VARCHAR; a fresh v2 install's users.id is a uuid, so no foreign key here (the user
-- delete route removes the row).
CREATE TABLE IF NOT EXISTS user_quotas (
    user_id VARCHAR(255) PRIMARY KEY,
    max_sessions INT DEFAULT 5,
    max_cpu VARCHAR(50) DEFAULT '4000m',
    max_memory VARCHAR(50) DEFAULT '16Gi',
    max_storage VARCHAR(50) DEFAULT '100Gi',
    used_sessions INT DEFAULT 0,
    used_cpu VARCHAR(50) DEFAULT '0',
    used_memory VARCHAR(50) DEFAULT '0',
    used_storage VARCHAR(50) DEFAULT '0',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

INSERT INTO schema_migrations (version) VALUES ('v2.0.7-console-live')
ON CONFLICT (version) DO NOTHING;
