-- version: v2.0.1-runtime
-- StreamSpace v2.0.1: columns and indexes the v2 control plane's runtime needs beyond the
-- migration guide's schema. Every statement is idempotent: running this file twice is harmless.

-- 1. agent_commands: idempotent dispatch, progress reporting, last change time
ALTER TABLE agent_commands
ADD COLUMN IF NOT EXISTS idempotency_key VARCHAR(255);

-- UNIQUE allows any number of NULLs, so commands without a key are unaffected.
CREATE UNIQUE INDEX IF NOT EXISTS idx_agent_commands_idempotency_key
ON agent_commands(idempotency_key);

ALTER TABLE agent_commands
ADD COLUMN IF NOT EXISTS progress TEXT;

ALTER TABLE agent_commands
ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP DEFAULT NOW();

-- Dispatcher query: "pending/sent commands of agent X"
CREATE INDEX IF NOT EXISTS idx_agent_commands_agent_id_status
ON agent_commands(agent_id, status);

COMMENT ON COLUMN agent_commands.idempotency_key IS 'Caller-supplied key; a retried request maps to the same command';
COMMENT ON COLUMN agent_commands.progress IS 'Last progress message reported by the agent (e.g. pulling image)';
COMMENT ON COLUMN agent_commands.updated_at IS 'Last status change of the command';

-- 2. sessions: failure reason and the Temporal workflow driving the session
ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS error_message TEXT;

ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS workflow_id VARCHAR(255);

COMMENT ON COLUMN sessions.error_message IS 'Why the session failed (NULL unless state = failed)';
COMMENT ON COLUMN sessions.workflow_id IS 'Temporal workflow id of the session lifecycle workflow';

-- 3. New sessions start pending (v1 defaulted to running); existing rows are not touched.
--    Not where `state` mirrors v1's `status` (002): there a NULL state on INSERT marks a row
--    written by v1, so `state` must keep no default.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute
        WHERE attrelid = to_regclass('sessions') AND attname = 'status' AND attnum > 0 AND NOT attisdropped
    ) THEN
        ALTER TABLE sessions ALTER COLUMN state SET DEFAULT 'pending';
    END IF;
END $$;

COMMENT ON COLUMN sessions.state IS 'Session state: pending, running, hibernated, terminating, terminated, failed';

INSERT INTO schema_migrations (version) VALUES ('v2.0.1-runtime')
ON CONFLICT (version) DO NOTHING;

SELECT 'v2.0.1 runtime migration completed successfully' AS status;
