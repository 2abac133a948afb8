-- version: v2.0.5-accounts
-- StreamSpace v2.0.5: accounts can be managed and logins are throttled.
--
--   * users.tokens_valid_after: user tokens issued (JWT iat) before this instant are refused. Set
--     when a password is changed or reset and when an account is disabled, so a stolen token dies
--     with the old password. v1 does not know the column and is unaffected (additive only).
--   * login_throttle: failed-login counters shared by every API pod, one row per key
--     ("user:<username>" or "addr:<client address>"), fixed window. Rows are tiny and expire by
--     being reset on the next attempt after the window; old ones are swept by the gateway.
-- Idempotent.

ALTER TABLE users ADD COLUMN IF NOT EXISTS tokens_valid_after TIMESTAMPTZ;

CREATE TABLE IF NOT EXISTS login_throttle (
    key VARCHAR(320) PRIMARY KEY,
    window_start TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    attempts INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS idx_login_throttle_window_start ON login_throttle(window_start);

COMMENT ON TABLE login_throttle IS 'Login attempt counters per username and per client address (fixed window), shared by all API pods';

INSERT INTO schema_migrations (version) VALUES ('v2.0.5-accounts')
ON CONFLICT (version) DO NOTHING;
