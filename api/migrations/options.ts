/** Defaults for a migration run (the spec's values), shared by the API and the operator CLI. */
import { randomUUID } from 'node:crypto';
import type { MigrationOptions } from '../../workflows/migration-api';

export type MigrationRequest = Partial<Omit<MigrationOptions, 'v1' | 'v2' | 'approval'>> & {
  v1?: Partial<MigrationOptions['v1']>;
  v2?: Partial<MigrationOptions['v2']>;
  approval?: Partial<MigrationOptions['approval']>;
};

export function migrationOptions(req: MigrationRequest, env: NodeJS.ProcessEnv = process.env): MigrationOptions {
  const v1Db = req.v1?.databaseUrl ?? env.V1_DATABASE_URL ?? env.DATABASE_URL;
  if (!v1Db) throw new Error('v1.databaseUrl (or V1_DATABASE_URL) is required');
  return {
    runId: req.runId ?? `mig-${new Date().toISOString().slice(0, 10)}-${randomUUID().slice(0, 8)}`,
    strategy: req.strategy ?? 'blue-green',
    dryRun: req.dryRun ?? false,
    v1: {
      apiUrl: req.v1?.apiUrl ?? env.V1_API_URL ?? 'http://streamspace-api.streamspace.svc:8080',
      databaseUrl: v1Db,
      kubeconfig: req.v1?.kubeconfig ?? env.KUBECONFIG,
      namespaces: req.v1?.namespaces ?? ['streamspace', 'workspaces'],
      deployments: req.v1?.deployments ?? ['streamspace/streamspace-api', 'streamspace/streamspace-controller'],
    },
    v2: {
      readyUrl: req.v2?.readyUrl ?? env.V2_READY_URL ?? `http://127.0.0.1:${env.PORT ?? 8080}/ready`,
      databaseUrl: req.v2?.databaseUrl,
      deployments: req.v2?.deployments ?? [
        'streamspace-v2/streamspace-control-plane',
        'streamspace-v2/streamspace-worker',
        'streamspace/streamspace-k8s-agent',
      ],
      platforms: req.v2?.platforms ?? ['kubernetes'],
    },
    backupDir: req.backupDir ?? env.MIGRATION_BACKUP_DIR ?? '/var/lib/streamspace/migration-backups',
    cohorts: req.cohorts ?? [
      { name: 'pilot', percent: 5 },
      { name: 'beta', percent: 25 },
    ],
    approval: {
      mode: req.approval?.mode ?? 'manual',
      soak: req.approval?.soak ?? '1h',
      maxSessionFailureRate: req.approval?.maxSessionFailureRate ?? 0.05,
    },
    importBatchSize: req.importBatchSize ?? 50,
    importPaceMs: req.importPaceMs ?? 0,
    agentWaitTimeout: req.agentWaitTimeout ?? '30m',
    decommissionAfter: req.decommissionAfter ?? '14d',
  };
}
