/**
 * Shared pieces of the benches: timing, percentiles, the summary row type, and access to the
 * test harness (real gateway, worker and Docker agents as child processes on 127.0.0.1).
 */
import path from 'node:path';
import * as harness from '../test/harness/stack';
import { sleep, Stack } from '../test/harness/stack';

/** The repository root (the harness finds it from the sources or from dist/). */
export const REPO_ROOT = harness.ROOT;

export { sleep, Stack };

/** One line of the final table. */
export interface Metric {
  metric: string;
  ours: string;
  target: string;
  peer: string;
}

export const now = (): bigint => process.hrtime.bigint();
/** Milliseconds between two hrtime readings. */
export const ms = (from: bigint, to: bigint = now()): number => Number(to - from) / 1e6;

export interface Summary {
  n: number;
  p50: number;
  p95: number;
  max: number;
  min: number;
  mean: number;
}

/** Nearest-rank percentile of an ascending array. */
function pct(sorted: number[], p: number): number {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

export function summarize(samples: number[]): Summary {
  const s = [...samples].sort((a, b) => a - b);
  return {
    n: s.length,
    p50: pct(s, 50),
    p95: pct(s, 95),
    max: s[s.length - 1] ?? NaN,
    min: s[0] ?? NaN,
    mean: s.reduce((a, b) => a + b, 0) / (s.length || 1),
  };
}

export const fmtMs = (v: number): string => (Number.isNaN(v) ? 'n/a' : v >= 100 ? `${v.toFixed(0)} ms` : v >= 10 ? `${v.toFixed(1)} ms` : `${v.toFixed(2)} ms`);
export const fmtSummary = (s: Summary): string => `n=${s.n} p50 ${fmtMs(s.p50)}  p95 ${fmtMs(s.p95)}  max ${fmtMs(s.max)}  (min ${fmtMs(s.min)})`;

export function log(bench: string, msg: string): void {
  process.stdout.write(`[${bench}] ${msg}\n`);
}

/** Runs fn over items with at most `limit` in flight. */
export async function mapLimit<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  });
  await Promise.all(workers);
  return out;
}

/** Polls GET /api/v1/sessions/:id every everyMs until the state is reached (bounded). */
export async function pollState(stack: Stack, token: string, id: string, state: string, everyMs = 20, timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await stack.call<{ state?: string; error?: string }>('GET', `/api/v1/sessions/${id}`, undefined, token);
    if (r.body?.state === state) return;
    if (r.body?.state === 'failed' && state !== 'failed') throw new Error(`session ${id} failed: ${r.body.error}`);
    if (Date.now() > deadline) throw new Error(`session ${id} not ${state} within ${timeoutMs} ms (is ${r.body?.state})`);
    await sleep(everyMs);
  }
}

/** Creates a session and returns its id (throws on anything but 201). */
export async function createSession(stack: Stack, token: string): Promise<string> {
  const r = await stack.call<{ id: string }>('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, token);
  if (r.status !== 201) throw new Error(`create session: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body.id;
}

/**
 * Starts a Stack, runs fn, and always tears the Stack down. Child logs go to
 * test-artifacts/logs/<name>-<id>/ (BENCH_LOG_LEVEL=debug for more).
 */
export async function withStack<T>(name: string, env: NodeJS.ProcessEnv, fn: (stack: Stack) => Promise<T>): Promise<T> {
  const stack = new Stack(name, { LOG_LEVEL: process.env.BENCH_LOG_LEVEL ?? 'info', ...env });
  log(name, `logs in ${path.relative(REPO_ROOT, stack.logDir)}`);
  active.add(stack);
  try {
    await stack.start();
    return await fn(stack);
  } finally {
    active.delete(stack);
    await stack.stop().catch((err: Error) => log(name, `cleanup failed: ${err.message}`));
  }
}

const active = new Set<Stack>();

/** Tears down whatever Stack is running (on SIGINT/SIGTERM: no orphaned gateways or containers). */
export async function stopActiveStacks(): Promise<void> {
  const stacks = [...active];
  active.clear();
  await Promise.all(stacks.map((s) => s.stop().catch(() => undefined)));
}
