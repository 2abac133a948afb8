/**
 * Every parameterised statement a pool runs is a named (server-side) prepared statement, per
 * connection: PostgreSQL parses, analyses and (once it settles on a generic plan) plans it once per
 * connection instead of on every call, and the client sends its text once. Statements without
 * parameters (BEGIN, COMMIT, SET ...) keep the simple protocol.
 *
 * The name is derived from the text, so one text is one statement on every connection of the
 * process. At most MAX_NAMED distinct texts are prepared per process (a statement whose text is
 * built at run time would otherwise grow every connection's set without end); later ones run
 * unnamed, as before. A text PostgreSQL refuses to run prepared again ("cached plan must not
 * change result type", after a schema change under a SELECT *) runs unnamed from then on.
 *
 * DB_PREPARED_STATEMENTS=false turns it off: a connection pooler in transaction mode that does not
 * track prepared statements (PgBouncer before 1.21) needs that.
 */
import { createHash } from 'node:crypto';
import type { PoolClient, QueryConfig } from 'pg';

const MAX_NAMED = 500;
const names = new Map<string, string | null>();

/** The statement name for a text; null when it runs unnamed. */
function nameFor(text: string): string | null {
  const known = names.get(text);
  if (known !== undefined) return known;
  if (names.size >= MAX_NAMED) return null;
  const name = `ss_${createHash('sha1').update(text).digest('hex').slice(0, 20)}`;
  names.set(text, name);
  return name;
}

/** PostgreSQL's answer when a prepared statement's result columns changed under it (SQLSTATE 0A000). */
function planChanged(err: unknown): boolean {
  return (err as { code?: string })?.code === '0A000' && /cached plan must not change result type/.test(String((err as Error).message));
}

type QueryFn = (config: unknown, values?: unknown, callback?: unknown) => unknown;

/** Makes the client's parameterised queries named prepared statements (called on the pool's 'connect'). */
export function prepareStatements(client: PoolClient): void {
  const original = client.query as unknown as QueryFn;
  const wrapped: QueryFn = function (this: PoolClient, config, values, callback) {
    let text: string | undefined;
    let params: unknown[] | undefined;
    let rest: Partial<QueryConfig> = {};
    let cb = callback;
    if (typeof config === 'string' && Array.isArray(values)) {
      text = config;
      params = values;
    } else if (config && typeof config === 'object' && typeof (config as { submit?: unknown }).submit !== 'function') {
      const c = config as QueryConfig;
      if (!c.name && typeof c.text === 'string') {
        text = c.text;
        params = c.values ?? (Array.isArray(values) ? values : undefined);
        rest = c;
        if (typeof values === 'function') cb = values;
      }
    }
    const name = text !== undefined && params && params.length > 0 ? nameFor(text) : null;
    if (!name) return original.call(this, config, values, callback);
    const run = (named: boolean) => original.call(this, { ...rest, text, values: params, ...(named ? { name } : {}) }) as Promise<unknown>;
    const result = run(true).catch((err: unknown) => {
      if (!planChanged(err)) throw err;
      // Unnamed from now on, in every connection (this one keeps the stale statement unused).
      names.set(text!, null);
      return run(false);
    });
    if (typeof cb !== 'function') return result;
    result.then(
      (res) => (cb as (e: Error | null, r?: unknown) => void)(null, res),
      (err: Error) => (cb as (e: Error | null) => void)(err),
    );
    return undefined;
  };
  (client as unknown as { query: QueryFn }).query = wrapped;
}
