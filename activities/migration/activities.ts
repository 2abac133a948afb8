/**
 * The v1 → v2 migration's activities, one module per phase (./phases/*). Each activity is
 * idempotent (a retried or resumed phase converges on the same result), heartbeats while it
 * works and stops when cancelled (child processes are killed).
 */
import { agentsActivities } from './phases/agents';
import { backupActivities } from './phases/backup';
import { cutoverActivities } from './phases/cutover';
import { decommissionActivities } from './phases/decommission';
import { importActivities } from './phases/import';
import { preflightActivities } from './phases/preflight';
import { rollbackActivities } from './phases/rollback';
import { schemaActivities } from './phases/schema';
import type { MigrationActivityDeps } from './common';

export type { MigrationActivityDeps, SchemaSnapshot, TableState } from './common';
export type { Check, PreflightReport } from './phases/preflight';
export type { BackupManifest } from './phases/backup';
export type { ImportCursor, ImportPageResult, ImportScope, V1Columns } from './phases/import';

export type MigrationActivities = ReturnType<typeof createMigrationActivities>;

export function createMigrationActivities(deps: MigrationActivityDeps) {
  return {
    ...preflightActivities(deps),
    ...backupActivities(),
    ...schemaActivities(),
    ...agentsActivities(),
    ...importActivities(deps),
    ...cutoverActivities(deps),
    ...decommissionActivities(),
    ...rollbackActivities(deps),
  };
}
