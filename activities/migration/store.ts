/** Writes an imported v1 session (and its owner) into a v2 database. */
import type { V2SessionRecord } from './convert';

interface Queryable {
  query(sql: string, args?: unknown[]): Promise<{ rowCount: number | null }>;
}

/**
 * Inserts the session; an existing row with the same id is refreshed (`onConflict: 'update'`,
 * the migration run re-importing its own v1 rows) or left alone (`'keep'`, bulk import). Returns
 * whether a row was written.
 */
export async function saveImportedSession(db: Queryable, s: V2SessionRecord, opts: { onConflict: 'update' | 'keep'; runId?: string }): Promise<boolean> {
  await db.query(`INSERT INTO users (username, role) VALUES ($1, 'user') ON CONFLICT (username) DO NOTHING`, [s.user]);
  const conflict =
    opts.onConflict === 'update'
      ? `DO UPDATE SET state = EXCLUDED.state, platform = EXCLUDED.platform, tags = EXCLUDED.tags,
           platform_metadata = COALESCE(sessions.platform_metadata, '{}'::jsonb) || EXCLUDED.platform_metadata, updated_at = NOW()`
      : 'DO NOTHING';
  const r = await db.query(
    `INSERT INTO sessions (id, user_id, template_name, state, platform, memory, cpu, persistent_home, idle_timeout,
                           max_session_duration, tags, platform_metadata, namespace)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     ON CONFLICT (id) ${conflict}`,
    [
      s.id,
      s.user,
      s.template,
      s.state,
      s.platform,
      s.memory,
      s.cpu,
      s.persistentHome,
      s.idleTimeout,
      s.maxSessionDuration,
      JSON.stringify(s.tags),
      opts.runId ? { ...s.metadata, migration_run: opts.runId } : s.metadata,
      s.metadata.v1_namespace ?? null,
    ],
  );
  return (r.rowCount ?? 0) > 0;
}
