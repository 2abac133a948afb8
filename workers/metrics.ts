/**
 * The worker's Prometheus metrics (prom-client) and the HTTP endpoint that serves them together with
 * the Temporal SDK's own metrics (Core's Prometheus exporter listens on an internal address; GET /metrics
 * here fetches its text and appends it, so one scrape target shows both).
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import client, { Counter, Histogram, Registry } from 'prom-client';

/** Command round trips: a few milliseconds (refused) to a slow image pull (minutes). */
/** Session start (create → running): 0.1 s to 10 min. */
export const SESSION_START_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 600];

export function createWorkerMetrics() {
  const registry = new Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'streamspace_worker_' });
  const registers = [registry];
  return {
    registry,
    sessionStart: new Histogram({
      name: 'streamspace_session_start_seconds',
      help: 'Time from session creation to running, by platform',
      labelNames: ['platform'] as const,
      buckets: SESSION_START_BUCKETS,
      registers,
    }),
    // Only the worker counts these (the gateway counts commands: expiry and round trip).
    sessionFailures: new Counter({
      name: 'streamspace_session_failures_total',
      help: 'Sessions that ended in state failed, by platform and reason (start_timeout, start_failed, command_failed, reconcile)',
      labelNames: ['platform', 'reason'] as const,
      registers,
    }),
    reconcileRepairs: new Counter({
      name: 'streamspace_reconcile_repairs_total',
      help: 'Repairs made after an agent reported a divergence, by action (remove_orphan, restart, hibernate_again, fail, none)',
      labelNames: ['action'] as const,
      registers,
    }),
    contentType: registry.contentType,
    /** The Prometheus text exposition of this registry (without the SDK's metrics). */
    render: (): Promise<string> => registry.metrics(),
  };
}
export type WorkerMetrics = ReturnType<typeof createWorkerMetrics>;

export interface WorkerMetricsServerOptions {
  /** 0 picks a free port (see `url` on the result). */
  port: number;
  host: string;
  metrics: WorkerMetrics;
  /** The Temporal Core SDK's Prometheus endpoint, e.g. http://127.0.0.1:9465/metrics. */
  sdkMetricsUrl?: string;
}

export interface WorkerMetricsServer {
  url: string;
  port: number;
  close(): Promise<void>;
}

/** Serves GET /metrics: our registry, then the Temporal SDK's metrics (a comment line if they cannot be read). */
export async function startWorkerMetricsServer(o: WorkerMetricsServerOptions): Promise<WorkerMetricsServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' || path !== '/metrics') {
      res.writeHead(path === '/metrics' ? 405 : 404, { 'content-type': 'text/plain' }).end(path === '/metrics' ? 'method not allowed\n' : 'not found\n');
      return;
    }
    void renderAll(o).then(
      (text) => res.writeHead(200, { 'content-type': o.metrics.contentType }).end(text),
      (err: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics unavailable: ${err.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = o.host.includes(':') ? `[${o.host}]` : o.host;
  return {
    url: `http://${host}:${port}/metrics`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function renderAll(o: WorkerMetricsServerOptions): Promise<string> {
  const ours = await o.metrics.render();
  if (!o.sdkMetricsUrl) return ours;
  let sdk: string;
  try {
    const r = await fetch(o.sdkMetricsUrl, { signal: AbortSignal.timeout(2000) });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    sdk = await r.text();
  } catch (err) {
    sdk = `# Temporal SDK metrics unavailable from ${o.sdkMetricsUrl}: ${String((err as Error).message).replace(/\s+/g, ' ')}\n`;
  }
  return (ours.endsWith('\n') ? ours : ours + '\n') + sdk;
}

/** A port that is free right now on host (for the SDK's exporter, which cannot report the port it picked). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}
