-- version: v2.0.0-agents
-- StreamSpace v2.0 Database Migration
-- Adds agent architecture tables
-- Compatible with v1.x schema (non-destructive)
--
-- Differences from the migration guide's v2.0-agents.sql (bugs fixed, everything else kept):
--   * agent_commands.session_id is VARCHAR(255), not UUID: v1 sessions.id is TEXT (the Session
--     CRD name), so a UUID foreign key to it cannot be created.
--   * the agents updated_at trigger is dropped before it is created, so the file can be re-run
--     (CREATE TRIGGER has no IF NOT EXISTS before PostgreSQL 14's CREATE OR REPLACE TRIGGER).
--   * StreamSpace v1.0.0 already has a platform_controllers table of another shape (controller_id,
--     platform, display_name, ...; no controller_type/name). The guide's indexes on
--     controller_type failed there ("column controller_type does not exist") and nothing of v2 was
--     created. The table is created only where it is absent, and its indexes only on that shape;
--     v1's own table is left exactly as it is.
--   * the guide's step 5 backfill (UPDATE sessions SET platform = ..., platform_metadata = ...) is
--     dropped: it rewrote v1's rows (on v1.0.0 `platform` is v1's own column) while v1 may still be
--     serving them (blue-green). v2 tells v1 rows apart without touching them: a row v2 manages
--     has a workflow_id (003); a NULL platform reads as kubernetes.
-- Every statement is idempotent: running this file twice is harmless.

-- 1. Create agents table
CREATE TABLE IF NOT EXISTS agents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id VARCHAR(255) UNIQUE NOT NULL,         -- "k8s-cluster-1"
    platform VARCHAR(50) NOT NULL,                 -- "kubernetes", "docker"
    region VARCHAR(100),                           -- "us-east-1", "eu-west-1"
    status VARCHAR(50) DEFAULT 'offline',          -- "online", "offline", "draining"
    capacity JSONB,                                -- {max_cpu, max_memory, max_sessions, current_sessions}
    metadata JSONB,                                -- Platform-specific metadata
    websocket_conn_id VARCHAR(255),                -- Active WebSocket connection ID
    last_heartbeat TIMESTAMP,                      -- Last heartbeat timestamp
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

-- Indexes for agents table
CREATE INDEX IF NOT EXISTS idx_agents_agent_id ON agents(agent_id);
CREATE INDEX IF NOT EXISTS idx_agents_platform ON agents(platform);
CREATE INDEX IF NOT EXISTS idx_agents_status ON agents(status);
CREATE INDEX IF NOT EXISTS idx_agents_region ON agents(region);
CREATE INDEX IF NOT EXISTS idx_agents_last_heartbeat ON agents(last_heartbeat);

-- Comments for agents table
COMMENT ON TABLE agents IS 'Registry of platform-specific agents (K8s, Docker, etc.)';
COMMENT ON COLUMN agents.agent_id IS 'Unique agent identifier (e.g., k8s-prod-us-east-1)';
COMMENT ON COLUMN agents.platform IS 'Platform type: kubernetes, docker, vm, cloud';
COMMENT ON COLUMN agents.capacity IS 'Agent capacity: {max_cpu: 100, max_memory: 256, max_sessions: 100, current_sessions: 5}';
COMMENT ON COLUMN agents.metadata IS 'Platform-specific metadata (cluster name, version, etc.)';

-- 2. Create agent_commands table
CREATE TABLE IF NOT EXISTS agent_commands (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id UUID REFERENCES agents(id) ON DELETE CASCADE,
    session_id VARCHAR(255) REFERENCES sessions(id) ON DELETE CASCADE,  -- v1 sessions.id is the CRD name (text)
    command_type VARCHAR(50) NOT NULL,            -- "start_session", "stop_session", "hibernate_session", "wake_session"
    command_data JSONB,                           -- Command parameters
    status VARCHAR(50) DEFAULT 'pending',          -- "pending", "sent", "ack", "completed", "failed"
    result JSONB,                                  -- Command result (pod IP, error message, etc.)
    error_message TEXT,                            -- Error details if failed
    retry_count INT DEFAULT 0,                     -- Number of retries attempted
    created_at TIMESTAMP DEFAULT NOW(),
    sent_at TIMESTAMP,
    acked_at TIMESTAMP,
    completed_at TIMESTAMP
);

-- Indexes for agent_commands table
CREATE INDEX IF NOT EXISTS idx_agent_commands_agent_id ON agent_commands(agent_id);
CREATE INDEX IF NOT EXISTS idx_agent_commands_session_id ON agent_commands(session_id);
CREATE INDEX IF NOT EXISTS idx_agent_commands_status ON agent_commands(status);
CREATE INDEX IF NOT EXISTS idx_agent_commands_created_at ON agent_commands(created_at);

-- Comments for agent_commands table
COMMENT ON TABLE agent_commands IS 'Command queue for Control Plane → Agent communication';
COMMENT ON COLUMN agent_commands.session_id IS 'Session the command acts on (sessions.id, the v1 Session CRD name)';
COMMENT ON COLUMN agent_commands.command_type IS 'Command type: start_session, stop_session, hibernate_session, wake_session';
COMMENT ON COLUMN agent_commands.status IS 'Command lifecycle: pending → sent → ack → completed/failed';

-- 3. Alter sessions table (add agent columns)
ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS agent_id UUID REFERENCES agents(id) ON DELETE SET NULL;

ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS platform VARCHAR(50);

ALTER TABLE sessions
ADD COLUMN IF NOT EXISTS platform_metadata JSONB;

-- Indexes for new sessions columns
CREATE INDEX IF NOT EXISTS idx_sessions_agent_id ON sessions(agent_id);
CREATE INDEX IF NOT EXISTS idx_sessions_platform ON sessions(platform);

-- Comments for new sessions columns
COMMENT ON COLUMN sessions.agent_id IS 'Agent managing this session (NULL if using v1.x controller)';
COMMENT ON COLUMN sessions.platform IS 'Platform where session is running: kubernetes, docker, vm, cloud';
COMMENT ON COLUMN sessions.platform_metadata IS 'Platform-specific session metadata';

-- 4. Create platform_controllers table (for future Docker/VM agents), unless v1 already has one
CREATE TABLE IF NOT EXISTS platform_controllers (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    controller_type VARCHAR(50) NOT NULL,         -- "kubernetes", "docker", "vmware"
    name VARCHAR(255) NOT NULL,
    endpoint VARCHAR(500),                         -- API endpoint URL
    region VARCHAR(100),
    status VARCHAR(50) DEFAULT 'offline',
    cluster_info JSONB,                            -- K8s cluster info, Docker host info, etc.
    capabilities JSONB,                            -- Supported features
    last_heartbeat TIMESTAMP,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW(),
    UNIQUE(controller_type, name)
);

-- Indexes and comment only on the guide's shape: v1.0.0's own table (controller_id, platform, ...)
-- keeps its indexes and comments.
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_catalog.pg_attribute
        WHERE attrelid = to_regclass('platform_controllers') AND attname = 'controller_type'
          AND attnum > 0 AND NOT attisdropped
    ) THEN
        CREATE INDEX IF NOT EXISTS idx_platform_controllers_type ON platform_controllers(controller_type);
        CREATE INDEX IF NOT EXISTS idx_platform_controllers_status ON platform_controllers(status);
        COMMENT ON TABLE platform_controllers IS 'Legacy table for controller-based architecture (used by admin UI)';
    END IF;
END $$;

-- 5. (The guide's backfill of v1 rows is intentionally not done: see the header.)

-- 6. Create migration tracking table
CREATE TABLE IF NOT EXISTS schema_migrations (
    version VARCHAR(50) PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT NOW()
);

INSERT INTO schema_migrations (version) VALUES ('v2.0.0-agents')
ON CONFLICT (version) DO NOTHING;

-- 7. Create functions for agent management
CREATE OR REPLACE FUNCTION update_agent_heartbeat()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

-- Re-runnable: the spec's bare CREATE TRIGGER fails with "already exists" on a second run.
DROP TRIGGER IF EXISTS trigger_agents_updated_at ON agents;
CREATE TRIGGER trigger_agents_updated_at
BEFORE UPDATE ON agents
FOR EACH ROW
EXECUTE FUNCTION update_agent_heartbeat();

-- Migration complete
SELECT 'v2.0 base migration completed successfully' AS status;
