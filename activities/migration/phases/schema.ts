/**
 * Phase 3, schema: this repository's migrations (additive only: v1 keeps serving from the same
 * tables), then the spec's verification queries.
 */
import { ApplicationFailure } from '@temporalio/activity';
import { migrate } from '../../../db/migrate';
import { heartbeating, redacting, v1DatabaseUrl, withDb } from '../common';
import type { MigrationOptions } from '../../../workflows/migration-api';

export function schemaActivities() {
  return redacting({
    async migrateSchema(o: MigrationOptions): Promise<{ applied: string[]; skipped: string[]; verified: string[] }> {
      const url = await v1DatabaseUrl(o);
      const r = await heartbeating({ step: 'migrations' }, () => migrate(url, { log: () => undefined }));
      const verified = await withDb(url, async (c) => {
        const missing: string[] = [];
        for (const t of ['agents', 'agent_commands', 'redis_agent_connections', 'leader_election_leases']) {
          if (!(await c.query('SELECT to_regclass($1) AS r', [t])).rows[0].r) missing.push(`table ${t}`);
        }
        const cols = await c.query(`SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'sessions'`);
        const have = new Set(cols.rows.map((x) => x.column_name));
        for (const col of ['agent_id', 'platform', 'platform_metadata', 'cluster_id', 'tags', 'state']) if (!have.has(col)) missing.push(`sessions.${col}`);
        const versions = await c.query(`SELECT version FROM schema_migrations WHERE version LIKE 'v2.0%'`);
        for (const v of ['v2.0.0-agents', 'v2.0.0-beta1-ha']) if (!versions.rows.some((x) => x.version === v)) missing.push(`schema_migrations ${v}`);
        if (missing.length) throw ApplicationFailure.nonRetryable(`schema verification failed: missing ${missing.join(', ')}`, 'SchemaVerification');
        return [
          'tables agents, agent_commands, redis_agent_connections, leader_election_leases',
          'sessions v2 columns',
          'schema_migrations v2.0.0-agents, v2.0.0-beta1-ha',
        ];
      });
      return { ...r, verified };
    },
  });
}
