import { PageHeader } from '../../components/common';

export function TemplatesPage() {
  return <PageHeader title="TemplatesPage" />;
}
