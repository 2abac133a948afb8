#!/bin/sh
# First start of the compose file's PostgreSQL only (/docker-entrypoint-initdb.d): Temporal's own
# role, allowed to create its databases (temporal, temporal_visibility) and nothing of StreamSpace's.
set -eu
: "${TEMPORAL_DB_PASSWORD:?set TEMPORAL_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -v pw="$TEMPORAL_DB_PASSWORD" <<'SQL'
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'pw';
SQL
