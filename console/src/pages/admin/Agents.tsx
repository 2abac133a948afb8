import { PageHeader } from '../../components/common';

export function AgentsPage() {
  return <PageHeader title="AgentsPage" />;
}
