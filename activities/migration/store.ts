/**
 * Writes an imported v1 session into the database v1 and v2 share. Blue-green: the row v1 wrote
 * stays the row; importing takes it over for v2 once (state, owner as users.id, platform, tags,
 * provenance). v1's own values of those columns are kept in platform_metadata (v1_state,
 * v1_platform, v1_user_id; v1_inserted when v1 had no row) so a rollback can put them back. A row v2 already manages (it has a workflow) is
 * never touched again.
 */
import { resolveV1Owner } from '../../db/users';
import type { V2SessionRecord } from './convert';

interface Queryable {
  query<R extends Record<string, unknown> = Record<string, unknown>>(sql: string, args?: unknown[]): Promise<{ rows: R[]; rowCount: number | null }>;
}

export class ImportError extends Error {}

/**
 * The users.id of a v1 session's owner: a v1 user by id, else by username. An owner who is not a
 * user is an import failure with that reason: the import never adds users (v1's users table is
 * v1's; a rollback leaves it exactly as v1 has it).
 */
export async function ownerId(db: Queryable, owner: string): Promise<string> {
  const found = await resolveV1Owner(db, owner);
  if (!found) throw new ImportError(`owner "${owner}" is not a user (create the user first, then import again)`);
  return found.id;
}

/**
 * Inserts the session, or takes over v1's row of the same id (`onConflict: 'update'`, the
 * migration run) or leaves an existing row alone (`'keep'`, bulk import). Returns whether a row
 * was written. Throws ImportError when the owner cannot be resolved.
 */
export async function saveImportedSession(db: Queryable, s: V2SessionRecord, opts: { onConflict: 'update' | 'keep'; runId?: string }): Promise<boolean> {
  const uid = await ownerId(db, s.owner);
  const conflict =
    opts.onConflict === 'update'
      ? // v1's own values of the columns taken over are recorded from the row itself; those recorded
        // by a first import win (a re-run after a crash finds v2's values in the row).
        // The state comes from the row as it is when this UPDATE locks it, not from an earlier
        // read: a v1 write landing between the import's read and this write is not overwritten.
        `DO UPDATE SET state = CASE WHEN sessions.state IN ('terminated', 'failed', 'deleted') THEN 'terminated' ELSE 'hibernated' END,
           user_id = EXCLUDED.user_id, platform = EXCLUDED.platform, tags = EXCLUDED.tags,
           platform_metadata = EXCLUDED.platform_metadata
             || jsonb_build_object('v1_state', sessions.state, 'v1_platform', sessions.platform, 'v1_user_id', sessions.user_id, 'v1_inserted', false)
             || COALESCE(sessions.platform_metadata, '{}'::jsonb)
         WHERE sessions.workflow_id IS NULL`
      : 'DO NOTHING';
  const metadata = { ...s.metadata, home_volume: s.homeVolume, ...(opts.runId ? { migration_run: opts.runId } : {}) };
  const r = await db.query(
    `INSERT INTO sessions (id, user_id, template_name, state, platform, memory, cpu, persistent_home, idle_timeout,
                           max_session_duration, tags, platform_metadata, namespace)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
     ON CONFLICT (id) ${conflict}`,
    [
      s.id,
      uid,
      s.template,
      s.state,
      s.platform,
      s.memory,
      s.cpu,
      s.persistentHome,
      s.idleTimeout,
      s.maxSessionDuration,
      JSON.stringify(s.tags),
      metadata,
      s.metadata.v1_namespace ?? null,
    ],
  );
  return (r.rowCount ?? 0) > 0;
}
