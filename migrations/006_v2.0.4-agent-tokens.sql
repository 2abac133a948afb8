-- version: v2.0.4-agent-tokens
-- Agent credentials are records. A token is accepted only while its row exists, is not revoked and
-- has not expired; only the sha256 of the token is kept (the token itself is shown once, at mint).
-- agent_id is the agent's name (agents.agent_id), not a foreign key: a token is minted before its
-- agent first registers. Revoking a row NOTIFYs agent_token_revoked (payload: the token id) so
-- every API pod closes a control socket authenticated with it at once.

CREATE TABLE IF NOT EXISTS agent_tokens (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id VARCHAR(255) NOT NULL,
    token_hash VARCHAR(64) NOT NULL UNIQUE,
    description TEXT,
    created_by VARCHAR(255),
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ,
    revoked_reason TEXT
);

CREATE INDEX IF NOT EXISTS idx_agent_tokens_live ON agent_tokens(agent_id) WHERE revoked_at IS NULL;

COMMENT ON TABLE agent_tokens IS 'Agent credentials (sha256 of the token); revoked_at/expires_at end them, also on live connections';

CREATE OR REPLACE FUNCTION notify_agent_token_revoked() RETURNS trigger AS $$
BEGIN
    IF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
        PERFORM pg_notify('agent_token_revoked', NEW.id::text);
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS agent_tokens_revoked ON agent_tokens;
CREATE TRIGGER agent_tokens_revoked AFTER UPDATE OF revoked_at ON agent_tokens
    FOR EACH ROW EXECUTE FUNCTION notify_agent_token_revoked();

INSERT INTO schema_migrations (version) VALUES ('v2.0.4-agent-tokens')
ON CONFLICT (version) DO NOTHING;
