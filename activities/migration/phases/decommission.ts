/**
 * Phase 7, decommission (and the in-place strategy's maintenance window): scale v1 to 0, delete
 * the v1 CRDs, archive the backup. Replica counts to bring back come from the backup manifest,
 * never from what a scale saw (a retried scale would see 0).
 */
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Kube } from '../kube';
import { inBackupDir, redacting, runDir, runProcess } from '../common';
import type { MigrationOptions } from '../../../workflows/migration-api';

export function decommissionActivities() {
  return redacting({
    async scaleDeployments(o: MigrationOptions, targets: Record<string, number>): Promise<Record<string, number | null>> {
      const kube = new Kube(o.v1.kubeconfig);
      const previous: Record<string, number | null> = {};
      for (const [ref, n] of Object.entries(targets)) previous[ref] = await kube.scale(ref, n);
      return previous;
    },

    async deleteV1Crds(o: MigrationOptions): Promise<string[]> {
      const kube = new Kube(o.v1.kubeconfig);
      const deleted: string[] = [];
      for (const n of ['sessions.stream.space', 'templates.stream.space']) if (await kube.deleteCrd(n)) deleted.push(n);
      return deleted;
    },

    async writeArchive(o: MigrationOptions, report: unknown): Promise<string> {
      await writeFile(path.join(runDir(o), 'report.json'), JSON.stringify(report, null, 2));
      const dir = runDir(o);
      const archive = inBackupDir(o, `streamspace-v1-archive-${o.runId}.tar.gz`);
      // Long options with `=` and `--` before the operand: nothing from the input is read as an option.
      await runProcess('tar', ['--create', '--gzip', `--file=${archive}`, `--directory=${path.dirname(dir)}`, '--', path.basename(dir)], 'tar');
      return archive;
    },
  });
}
