-- version: v2.0.2-vnc-tickets
-- Short-lived, single-use tickets that authorise one VNC viewer connection, so no long-lived
-- JWT ever appears in a WebSocket URL. Stored here (not in a pod's memory) so a ticket issued by
-- one API pod can be redeemed on another. Only a hash of the ticket is kept.

CREATE TABLE IF NOT EXISTS vnc_tickets (
    ticket_hash VARCHAR(64) PRIMARY KEY,
    session_id VARCHAR(255) NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    username VARCHAR(255) NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    created_at TIMESTAMP DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_vnc_tickets_expires_at ON vnc_tickets(expires_at);

COMMENT ON TABLE vnc_tickets IS 'Single-use VNC viewer tickets (sha256 of the ticket), deleted when redeemed or expired';

INSERT INTO schema_migrations (version) VALUES ('v2.0.2-vnc-tickets')
ON CONFLICT (version) DO NOTHING;
