/**
 * `npm run temporal:setup` (`node dist/db/temporal-setup.js`): prepares a Temporal server for StreamSpace,
 * as an explicit, idempotent setup step (the compose file's `setup` service runs it after the schema
 * migrations; run it once per namespace on any other server):
 *
 *   1. waits for the server (up to TEMPORAL_SETUP_WAIT, default 2m: the server may be starting too)
 *   2. registers TEMPORAL_NAMESPACE unless it exists, with TEMPORAL_NAMESPACE_RETENTION (default 7d)
 *      of closed workflow history
 *   3. adds the search attributes the workflows set (workflows/search-attributes.ts) that the
 *      namespace lacks, and waits until the server lists them all
 *
 * Connection settings (TLS, mTLS, API key) as every process: config/temporal.ts. On Temporal Cloud the
 * namespace and its search attributes are created with Cloud's own tools (the data-plane API refuses
 * both); this step then only checks that they are there.
 */
import { Connection } from '@temporalio/client';
import { msNumberToTs } from '@temporalio/common';
import { temporal } from '@temporalio/proto';
import { envDuration, envString } from '../config/env';
import { temporalSettings, type TemporalConnectionOptions } from '../config/temporal';
import { SA } from '../workflows/search-attributes';

type IndexedValueType = temporal.api.enums.v1.IndexedValueType;
const IVT = temporal.api.enums.v1.IndexedValueType;

/** gRPC status codes we tell apart. */
const GRPC = { NOT_FOUND: 5, ALREADY_EXISTS: 6, PERMISSION_DENIED: 7, UNIMPLEMENTED: 12 } as const;

/** The search attributes StreamSpace's workflows set, name → indexed type. */
export function requiredSearchAttributes(): Record<string, IndexedValueType> {
  const out: Record<string, IndexedValueType> = {};
  for (const key of Object.values(SA)) {
    // SearchAttributeType "KEYWORD" ↔ IndexedValueType INDEXED_VALUE_TYPE_KEYWORD, and so on.
    const t = IVT[`INDEXED_VALUE_TYPE_${key.type}` as keyof typeof IVT] as IndexedValueType | undefined;
    if (t === undefined) throw new Error(`search attribute ${key.name}: no indexed type for ${key.type}`);
    out[key.name] = t;
  }
  return out;
}

export interface TemporalSetupOptions {
  connection: TemporalConnectionOptions;
  namespace: string;
  /** Retention of closed workflows, for a namespace this step registers. */
  retentionMs: number;
  /** How long to wait for the server to answer. */
  waitMs: number;
  log: (line: string) => void;
}

export interface TemporalSetupResult {
  namespaceCreated: boolean;
  attributesAdded: string[];
}

export async function temporalSetup(o: TemporalSetupOptions): Promise<TemporalSetupResult> {
  const connection = await connectWhenUp(o);
  try {
    const namespaceCreated = await ensureNamespace(connection, o);
    const attributesAdded = await ensureAttributes(connection, o);
    return { namespaceCreated, attributesAdded };
  } finally {
    await connection.close().catch(() => undefined);
  }
}

async function connectWhenUp(o: TemporalSetupOptions): Promise<Connection> {
  const deadline = Date.now() + o.waitMs;
  let said = false;
  for (;;) {
    try {
      const c = await Connection.connect({ ...o.connection, connectTimeout: 5000 });
      await c.workflowService.getSystemInfo({});
      return c;
    } catch (err) {
      if (Date.now() > deadline) throw new Error(`Temporal at ${o.connection.address} did not answer within ${Math.round(o.waitMs / 1000)}s: ${message(err)}`);
      if (!said) o.log(`waiting for Temporal at ${o.connection.address} (${message(err)})`);
      said = true;
      await sleep(1000);
    }
  }
}

async function ensureNamespace(c: Connection, o: TemporalSetupOptions): Promise<boolean> {
  if (await namespaceExists(c, o.namespace)) {
    o.log(`namespace ${o.namespace}: exists`);
    return false;
  }
  let created = true;
  try {
    await c.workflowService.registerNamespace({
      namespace: o.namespace,
      description: 'StreamSpace sessions and migrations',
      workflowExecutionRetentionPeriod: msNumberToTs(o.retentionMs),
    });
  } catch (err) {
    if (code(err) !== GRPC.ALREADY_EXISTS) throw new Error(`registering namespace ${o.namespace}: ${message(err)}`);
    created = false; // registered concurrently (another setup run)
  }
  // The frontend serves a new namespace once its registry has it.
  await until(`namespace ${o.namespace} to be served`, () => namespaceExists(c, o.namespace), 30_000);
  o.log(`namespace ${o.namespace}: ${created ? `registered (retention ${Math.round(o.retentionMs / 3_600_000)}h)` : 'exists'}`);
  return created;
}

async function namespaceExists(c: Connection, namespace: string): Promise<boolean> {
  try {
    await c.workflowService.describeNamespace({ namespace });
    return true;
  } catch (err) {
    if (code(err) === GRPC.NOT_FOUND) return false;
    throw err;
  }
}

async function ensureAttributes(c: Connection, o: TemporalSetupOptions): Promise<string[]> {
  const wanted = requiredSearchAttributes();
  const missing = async (): Promise<Record<string, IndexedValueType>> => {
    // A namespace registered a moment ago may not be in every service's registry yet (refreshed every ~10 s).
    const listed = await whileNotFound(`namespace ${o.namespace} in the server's registry`, () =>
      c.operatorService.listSearchAttributes({ namespace: o.namespace }),
    );
    const have: Record<string, IndexedValueType> = { ...(listed.systemAttributes ?? {}), ...(listed.customAttributes ?? {}) };
    const out: Record<string, IndexedValueType> = {};
    for (const [name, type] of Object.entries(wanted)) {
      if (have[name] === undefined) out[name] = type;
      else if (have[name] !== type)
        throw new Error(
          `search attribute ${name} exists on namespace ${o.namespace} as ${IVT[have[name]]}, StreamSpace needs ${IVT[type]}: remove or rename it`,
        );
    }
    return out;
  };
  const absent = await missing();
  const names = Object.keys(absent);
  if (!names.length) {
    o.log(`search attributes: all ${Object.keys(wanted).length} present`);
    return [];
  }
  try {
    await whileNotFound(`namespace ${o.namespace} in the server's registry`, () =>
      c.operatorService.addSearchAttributes({ namespace: o.namespace, searchAttributes: absent }),
    );
  } catch (err) {
    const hint =
      code(err) === GRPC.PERMISSION_DENIED || code(err) === GRPC.UNIMPLEMENTED
        ? ' (this server does not let clients add search attributes, e.g. Temporal Cloud: add them with its own tools, all of type Keyword)'
        : '';
    if (code(err) !== GRPC.ALREADY_EXISTS) throw new Error(`adding search attributes ${names.join(', ')}: ${message(err)}${hint}`);
  }
  await until(`search attributes ${names.join(', ')} on ${o.namespace}`, async () => Object.keys(await missing()).length === 0, 30_000);
  o.log(`search attributes: added ${names.join(', ')}`);
  return names;
}

/** Retries fn while the server answers NOT_FOUND (a namespace cache still catching up), for up to 30 s. */
async function whileNotFound<T>(what: string, fn: () => Promise<T>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (code(err) !== GRPC.NOT_FOUND) throw err;
      if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}: ${message(err)}`);
      await sleep(500);
    }
  }
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
    await sleep(250);
  }
}

function code(err: unknown): number | undefined {
  return (err as { code?: number }).code;
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function main(): Promise<number> {
  const settings = temporalSettings();
  const log = (line: string) => process.stdout.write(`temporal:setup: ${line}\n`);
  log(`Temporal ${settings.description}, namespace ${settings.namespace}`);
  await temporalSetup({
    connection: settings.connection,
    namespace: settings.namespace,
    retentionMs: envDuration('TEMPORAL_NAMESPACE_RETENTION', '7d'),
    waitMs: envDuration('TEMPORAL_SETUP_WAIT', '2m'),
    log,
  });
  log(`done (task queue ${envString('TEMPORAL_TASK_QUEUE', 'streamspace-sessions')} needs no registration)`);
  return 0;
}

if (require.main === module) {
  main().then(
    (c) => {
      process.exitCode = c;
    },
    (err: unknown) => {
      process.stderr.write(`temporal:setup failed: ${message(err)}\n`);
      process.exitCode = 1;
    },
  );
}
