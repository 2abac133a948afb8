import type { Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { SA } from '../workflows/search-attributes';

const GRPC_ALREADY_EXISTS = 6;
const GRPC_UNIMPLEMENTED = 12;

/**
 * Registers the StreamSpace search attributes on the namespace if they are missing, so the
 * Temporal UI can filter sessions by user, platform, agent and state on any server.
 */
export async function ensureSearchAttributes(connection: Connection, namespace: string): Promise<void> {
  let existing;
  try {
    existing = await connection.operatorService.listSearchAttributes({ namespace });
  } catch (err) {
    // A server without the listing (Temporal's time-skipping test server): add them all; the
    // ones it already has are refused as existing.
    if ((err as { code?: number }).code !== GRPC_UNIMPLEMENTED) throw err;
    const all = Object.fromEntries(Object.values(SA).map((k) => [k.name, temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD]));
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: all }).catch((e: { code?: number }) => {
      if (e.code !== GRPC_ALREADY_EXISTS) throw e;
    });
    return;
  }
  const missing: Record<string, temporal.api.enums.v1.IndexedValueType> = {};
  for (const key of Object.values(SA)) {
    if (!existing.customAttributes?.[key.name]) missing[key.name] = temporal.api.enums.v1.IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD;
  }
  if (Object.keys(missing).length) {
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes: missing });
  }
}
