import { PageHeader } from '../../components/common';

export function MigrationsPage() {
  return <PageHeader title="Migrations" />;
}
export function MigrationRunPage({ runId }: { runId: string }) {
  return <PageHeader title={`Migration ${runId}`} />;
}
