-- version: v2.0.0-beta1-ha
-- StreamSpace v2.0-beta.1 Database Migration
-- Adds High Availability features and bug fixes from Waves 10-17
-- Run AFTER v2.0-agents.sql
--
-- Differences from the migration guide's v2.0-beta1-additions.sql (bugs fixed, everything else kept):
--   * sessions.cluster_id is added (the guide's "Check new columns" step greps sessions for
--     cluster_id, but the guide only ever added agents.cluster_id).
--   * no status -> state rename: a `state` column is added beside `status` and kept equal to it by
--     a trigger, so a v1 still reading and writing `status` keeps working during a blue-green
--     migration (the rename broke it). The check looks only at the sessions table that ALTER
--     TABLE sessions touches (search_path), ignores dropped columns and needs no column privileges.
-- Every statement is idempotent: running this file twice is harmless.

-- 1. Add cluster_id column to agents (for multi-cluster HA)
ALTER TABLE agents
ADD COLUMN IF NOT EXISTS cluster_id VARCHAR(255);

CREATE INDEX IF NOT EXISTS idx_agents_cluster_id ON agents(cluster_id);

COMMENT ON COLUMN agents.cluster_id IS 'Cluster identifier for multi-cluster deployments';

-- 1b. Add cluster_id column to sessions (expected by the guide's verification step)
ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS cluster_id VARCHAR(255);

CREATE INDEX IF NOT EXISTS idx_sessions_cluster_id ON sessions(cluster_id);

COMMENT ON COLUMN sessions.cluster_id IS 'Cluster the session runs on (multi-cluster deployments)';

-- 2. Add tags column to sessions (for filtering and organization)
ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS tags JSONB DEFAULT '[]'::jsonb;

CREATE INDEX IF NOT EXISTS idx_sessions_tags ON sessions USING gin(tags);

COMMENT ON COLUMN sessions.tags IS 'Session tags for filtering and organization';

-- 3. Add active_sessions column to agents (for capacity tracking)
ALTER TABLE agents
ADD COLUMN IF NOT EXISTS active_sessions INT DEFAULT 0;

CREATE INDEX IF NOT EXISTS idx_agents_active_sessions ON agents(active_sessions);

COMMENT ON COLUMN agents.active_sessions IS 'Current number of active sessions on this agent';

-- 4. Update websocket_conn_id to allow NULL (agents can be offline)
-- Already nullable, but add comment for clarity
COMMENT ON COLUMN agents.websocket_conn_id IS 'Current WebSocket connection ID (NULL if offline)';

-- 5. Create redis_agent_connections table (for Redis-backed AgentHub)
CREATE TABLE IF NOT EXISTS redis_agent_connections (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id VARCHAR(255) NOT NULL,
    pod_id VARCHAR(255) NOT NULL,                 -- Control Plane pod handling this connection
    websocket_conn_id VARCHAR(255) NOT NULL,
    connected_at TIMESTAMP DEFAULT NOW(),
    last_heartbeat TIMESTAMP DEFAULT NOW(),
    UNIQUE(agent_id, websocket_conn_id)
);

CREATE INDEX IF NOT EXISTS idx_redis_agent_connections_agent_id ON redis_agent_connections(agent_id);
CREATE INDEX IF NOT EXISTS idx_redis_agent_connections_pod_id ON redis_agent_connections(pod_id);

COMMENT ON TABLE redis_agent_connections IS 'Tracks agent connections across multiple Control Plane pods (Redis backend)';
COMMENT ON COLUMN redis_agent_connections.pod_id IS 'Control Plane pod ID handling this agent connection';

-- 6. Create leader_election_leases table (for tracking leader elections)
CREATE TABLE IF NOT EXISTS leader_election_leases (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    lease_name VARCHAR(255) UNIQUE NOT NULL,      -- e.g., "k8s-agent-leader"
    holder_identity VARCHAR(255),                 -- Current lease holder (pod name)
    acquired_time TIMESTAMP,
    renew_time TIMESTAMP,
    lease_duration_seconds INT DEFAULT 15,
    platform VARCHAR(50),                         -- "kubernetes", "docker"
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_leader_election_leases_name ON leader_election_leases(lease_name);
CREATE INDEX IF NOT EXISTS idx_leader_election_leases_holder ON leader_election_leases(holder_identity);

COMMENT ON TABLE leader_election_leases IS 'Tracks leader election leases for HA agent deployments';
COMMENT ON COLUMN leader_election_leases.holder_identity IS 'Current lease holder (agent pod name or Docker agent instance ID)';

-- 7. Add state column to sessions (was missing, caused P0-WRONG-COLUMN bug)
-- Installs whose sessions table calls the column `status` get a `state` column BESIDE it, kept
-- equal to `status` by a trigger in both directions. The guide renamed `status` to `state`, which
-- breaks a v1 that is still serving during a blue-green migration (every v1 query on `status`
-- fails the moment this file commits). The rename can happen once v1 is decommissioned.
-- to_regclass('sessions') resolves the name exactly as ALTER TABLE sessions does (current schema
-- via search_path), so a "sessions" table in another schema cannot mislead the check.
CREATE OR REPLACE FUNCTION sessions_sync_status_state()
RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- v1 writes only `status`; v2 always writes `state`.
        IF NEW.state IS NULL THEN
            NEW.state := NEW.status;
        ELSE
            NEW.status := NEW.state;
        END IF;
    ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
        NEW.status := NEW.state;
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        NEW.state := NEW.status;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DO $$
DECLARE
    sessions_table regclass := to_regclass('sessions');
    has_status boolean;
    has_state boolean;
BEGIN
    SELECT bool_or(attname = 'status'), bool_or(attname = 'state') INTO has_status, has_state
      FROM pg_catalog.pg_attribute
     WHERE attrelid = sessions_table AND attnum > 0 AND NOT attisdropped;
    IF has_status AND NOT has_state THEN
        -- No default on state: a NULL state on INSERT is how the trigger knows v1 wrote the row.
        ALTER TABLE sessions ADD COLUMN state VARCHAR(50);
        UPDATE sessions SET state = status WHERE state IS DISTINCT FROM status;
    END IF;
    IF has_status THEN
        DROP TRIGGER IF EXISTS trigger_sessions_sync_status_state ON sessions;
        CREATE TRIGGER trigger_sessions_sync_status_state
        BEFORE INSERT OR UPDATE ON sessions
        FOR EACH ROW EXECUTE FUNCTION sessions_sync_status_state();
    END IF;
END $$;

-- Ensure state column exists (a table with neither column gets the guide's column and default)
ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS state VARCHAR(50) DEFAULT 'pending';

CREATE INDEX IF NOT EXISTS idx_sessions_state ON sessions(state);

COMMENT ON COLUMN sessions.state IS 'Session state: pending, running, hibernated, terminating, terminated';

-- 8. Update agent_commands table to handle NULL values properly
-- Add default for retry_count (was causing NULL scan errors)
ALTER TABLE agent_commands
ALTER COLUMN retry_count SET DEFAULT 0;

-- Update existing NULL retry_count values
UPDATE agent_commands
SET retry_count = 0
WHERE retry_count IS NULL;

-- 9. Insert migration version
INSERT INTO schema_migrations (version) VALUES ('v2.0.0-beta1-ha')
ON CONFLICT (version) DO NOTHING;

-- Migration complete
SELECT 'v2.0-beta.1 additions migration completed successfully' AS status;
