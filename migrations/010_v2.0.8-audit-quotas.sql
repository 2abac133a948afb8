-- version: v2.0.8-audit-quotas
-- v2.0.8: audit log, quotas and licence limits (issue 13).
--   * audit_log exactly as v1.0.0 creates it (api/internal/db/database.go), so an install that ran
--     v1 keeps writing into the same table and its history continues; a fresh v2 install gets the
--     same shape. Indexes as v1's: timestamp DESC, user_id, (user_id, timestamp DESC).
--   * quota_reservations: a wake in flight holds its owner's quota (CPU, memory, one session)
--     from the moment the workflow admits it until the session is running or the wake has failed.
--     Rows expire on their own (expires_at) should a worker die in between.
-- No licenses table is created: with none (or no active row) nothing is limited, as in v1.
-- Idempotent: safe to re-run.
CREATE TABLE IF NOT EXISTS audit_log (
    id SERIAL PRIMARY KEY,
    user_id VARCHAR(255),
    action VARCHAR(100),
    resource_type VARCHAR(100),
    resource_id VARCHAR(255),
    changes JSONB,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    ip_address VARCHAR(45)
);
CREATE INDEX IF NOT EXISTS idx_audit_log_timestamp ON audit_log(timestamp DESC);
CREATE INDEX IF NOT EXISTS idx_audit_log_user_id ON audit_log(user_id);
CREATE INDEX IF NOT EXISTS idx_audit_log_user_timestamp ON audit_log(user_id, timestamp DESC);

CREATE TABLE IF NOT EXISTS quota_reservations (
    session_id VARCHAR(255) PRIMARY KEY,
    user_id VARCHAR(255) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_quota_reservations_user ON quota_reservations (user_id, expires_at);

INSERT INTO schema_migrations (version) VALUES ('v2.0.8-audit-quotas')
ON CONFLICT (version) DO NOTHING;
