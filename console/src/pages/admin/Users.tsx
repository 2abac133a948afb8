import { PageHeader } from '../../components/common';

export function UsersPage() {
  return <PageHeader title="UsersPage" />;
}
