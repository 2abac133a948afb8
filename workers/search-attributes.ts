import type { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { SA } from '../workflows/search-attributes';

/**
 * Registers the StreamSpace search attributes on the namespace if they are missing, so the
 * Temporal UI can filter sessions by user, platform, agent and state on any server.
 */
export async function ensureSearchAttributes(connection: Connection, namespace: string): Promise<void> {
  const existing = await connection.operatorService.listSearchAttributes({ namespace });
  const missing: Record<string, temporal.api.enums.v1.IndexedValueType> = {};
  for (const key of Object.values(SA)) {
    if (!existing.customAttributes?.[key.name]) missing[key.name] = temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
  }
  if (Object.keys(missing).length) {
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: missing });
  }
}
