-- version: v1.0.0-baseline
-- StreamSpace v1.x baseline schema.
--
-- On a fresh database this creates the three tables StreamSpace v1 had (users, the template
-- catalog, sessions) so that the v2.0 migrations have something to alter. On a real v1 database
-- every statement is a no-op for what already exists: tables are created only IF NOT EXISTS and
-- v1's own column types, constraints and data are kept. Columns that some v1 installs lacked are
-- added only when they can be added without a value (nullable or with a default).
--
-- NOTE: sessions.state is deliberately NOT added here: some v1 installs call that column
-- `status`, and 002 renames it to `state` (adding `state` here would defeat the rename).

-- gen_random_uuid() is built in from PostgreSQL 13; older servers get it from pgcrypto.
DO $$
BEGIN
    IF to_regprocedure('gen_random_uuid()') IS NULL THEN
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
    END IF;
END $$;

-- 1. Users
CREATE TABLE IF NOT EXISTS users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    username VARCHAR(255) UNIQUE NOT NULL,
    email VARCHAR(255),
    role VARCHAR(50) NOT NULL DEFAULT 'user',        -- "user", "admin"
    password_hash TEXT,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

ALTER TABLE users ADD COLUMN IF NOT EXISTS email VARCHAR(255);
ALTER TABLE users ADD COLUMN IF NOT EXISTS role VARCHAR(50) NOT NULL DEFAULT 'user';
ALTER TABLE users ADD COLUMN IF NOT EXISTS password_hash TEXT;
ALTER TABLE users ADD COLUMN IF NOT EXISTS created_at TIMESTAMP DEFAULT NOW();
ALTER TABLE users ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP DEFAULT NOW();

COMMENT ON TABLE users IS 'StreamSpace users (v1.x schema)';

-- 2. Template catalog (manifest holds the v1 Template CRD spec: baseImage, defaultResources,
--    ports, env, volumeMounts, vnc/kasmvnc, capabilities, tags, ...)
CREATE TABLE IF NOT EXISTS templates (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) UNIQUE NOT NULL,               -- e.g. "firefox-browser"
    display_name VARCHAR(255) NOT NULL,
    description TEXT,
    category VARCHAR(100),
    icon TEXT,
    manifest JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

ALTER TABLE templates ADD COLUMN IF NOT EXISTS description TEXT;
ALTER TABLE templates ADD COLUMN IF NOT EXISTS category VARCHAR(100);
ALTER TABLE templates ADD COLUMN IF NOT EXISTS icon TEXT;
ALTER TABLE templates ADD COLUMN IF NOT EXISTS manifest JSONB NOT NULL DEFAULT '{}';
ALTER TABLE templates ADD COLUMN IF NOT EXISTS created_at TIMESTAMP DEFAULT NOW();
ALTER TABLE templates ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP DEFAULT NOW();

COMMENT ON TABLE templates IS 'Template catalog; manifest is the v1 Template spec as JSON';

-- 3. Sessions (id is the v1 Session CRD name, user_id the username)
CREATE TABLE IF NOT EXISTS sessions (
    id VARCHAR(255) PRIMARY KEY,                     -- v1 Session CRD name
    user_id VARCHAR(255) NOT NULL,                   -- username
    template_name VARCHAR(255) NOT NULL,
    state VARCHAR(50) DEFAULT 'running',             -- running, hibernated, terminated
    url TEXT,
    namespace VARCHAR(255) DEFAULT 'streamspace',
    pod_name VARCHAR(255),
    memory VARCHAR(50),
    cpu VARCHAR(50),
    persistent_home BOOLEAN DEFAULT TRUE,
    idle_timeout VARCHAR(50) DEFAULT '30m',
    max_session_duration VARCHAR(50) DEFAULT '8h',
    last_activity TIMESTAMP,
    created_at TIMESTAMP DEFAULT NOW(),
    updated_at TIMESTAMP DEFAULT NOW()
);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS url TEXT;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS namespace VARCHAR(255) DEFAULT 'streamspace';
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS pod_name VARCHAR(255);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS memory VARCHAR(50);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS cpu VARCHAR(50);
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS persistent_home BOOLEAN DEFAULT TRUE;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS idle_timeout VARCHAR(50) DEFAULT '30m';
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS max_session_duration VARCHAR(50) DEFAULT '8h';
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS last_activity TIMESTAMP;
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS created_at TIMESTAMP DEFAULT NOW();
ALTER TABLE sessions ADD COLUMN IF NOT EXISTS updated_at TIMESTAMP DEFAULT NOW();

CREATE INDEX IF NOT EXISTS idx_sessions_user_id ON sessions(user_id);

COMMENT ON TABLE sessions IS 'Streaming sessions; id is the v1 Session CRD name';

-- 4. Migration tracking (the runner creates it too; kept so the file also works under psql -f)
CREATE TABLE IF NOT EXISTS schema_migrations (
    version VARCHAR(50) PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT NOW()
);

INSERT INTO schema_migrations (version) VALUES ('v1.0.0-baseline')
ON CONFLICT (version) DO NOTHING;

SELECT 'v1 baseline ensured' AS status;
