-- version: v2.0.6-command-deadlines
-- v2.0.6: every command has a deadline and an owner; session rows are never left without a workflow.
--   * agent_commands.generation: the session's command sequence number (the workflow's). Agents
--     refuse a command older than one they already acted on for the session.
--   * agent_commands.expires_at: after it, the command is never (re)delivered nor started.
--   * agent_commands.withdrawn_at: the workflow gave up on the command (timeout, cancel); its
--     status is 'failed', the agent is told to abandon and undo it.
--   * sessions.workflow_confirmed: false between the gateway's INSERT and a confirmed workflow
--     start; the gateway's reaper adopts rows left false by a crash. NULL on v1 rows and on rows
--     older than this migration (their workflows exist).
-- Idempotent: safe to re-run.
ALTER TABLE agent_commands ADD COLUMN IF NOT EXISTS generation INT NOT NULL DEFAULT 0;
ALTER TABLE agent_commands ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;
ALTER TABLE agent_commands ADD COLUMN IF NOT EXISTS withdrawn_at TIMESTAMPTZ;
-- Delivery, redelivery and the expiry sweep only look at unfinished commands.
CREATE INDEX IF NOT EXISTS idx_agent_commands_open ON agent_commands (agent_id, created_at) WHERE status IN ('pending', 'sent', 'ack');

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS workflow_confirmed BOOLEAN;
CREATE INDEX IF NOT EXISTS idx_sessions_workflow_unconfirmed ON sessions (created_at) WHERE workflow_confirmed = false;

INSERT INTO schema_migrations (version) VALUES ('v2.0.6-command-deadlines')
ON CONFLICT (version) DO NOTHING;
