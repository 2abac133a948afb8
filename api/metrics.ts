/**
 * The gateway's Prometheus metrics (prom-client), served at /metrics. Each createMetrics() has its own
 * Registry, so several gateways (or tests) can live in one process.
 *
 * Counters and gauges are thin wrappers over prom-client that keep this code base's call shapes
 * (`inc(labels?, by?)`, `set(value, labels?)`, and a synchronous `get(labels?)`); prom-client's own shapes
 * (`inc(by)`, `set(labels, value)`) work too. Histograms are plain prom-client Histograms.
 */
import client, { Histogram, Registry } from 'prom-client';

export type Labels = Record<string, string | number>;

const key = (labels: Labels) =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}=${String(labels[k])}`)
    .join('\u0000');

abstract class Metric<M extends client.Counter | client.Gauge> {
  /** Mirror of the values, for synchronous reads (prom-client's get() is async). */
  protected readonly values = new Map<string, number>();
  abstract readonly metric: M;
  /** Current value of one series (0 when never set). */
  get(labels: Labels = {}): number {
    return this.values.get(key(labels)) ?? 0;
  }
  /** Drops every series. */
  reset(): void {
    this.values.clear();
    this.metric.reset();
  }
  protected add(labels: Labels, by: number): void {
    const k = key(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
}

export class Counter extends Metric<client.Counter> {
  readonly metric: client.Counter;
  constructor(registry: Registry, name: string, help: string, labelNames: readonly string[] = []) {
    super();
    this.metric = new client.Counter({ name, help, labelNames, registers: [registry] });
  }
  inc(labels?: Labels | number, by = 1): void {
    if (typeof labels === 'number') [labels, by] = [{}, labels];
    labels ??= {};
    this.metric.inc(labels, by);
    this.add(labels, by);
  }
}

export class Gauge extends Metric<client.Gauge> {
  readonly metric: client.Gauge;
  constructor(registry: Registry, name: string, help: string, labelNames: readonly string[] = []) {
    super();
    this.metric = new client.Gauge({ name, help, labelNames, registers: [registry] });
  }
  /** `set(value, labels?)`, or prom-client's `set(labels, value)`. */
  set(value: number | Labels, labels: Labels | number = {}): void {
    const [v, l] = typeof value === 'number' ? [value, labels as Labels] : [labels as number, value];
    this.metric.set(l, v);
    this.values.set(key(l), v);
  }
  inc(labels?: Labels | number, by = 1): void {
    if (typeof labels === 'number') [labels, by] = [{}, labels];
    labels ??= {};
    this.metric.inc(labels, by);
    this.add(labels, by);
  }
  dec(labels?: Labels | number, by = 1): void {
    if (typeof labels === 'number') [labels, by] = [{}, labels];
    this.inc(labels ?? {}, -by);
  }
}

/** Command round trips: from a few milliseconds (a refused command) to a slow image pull (minutes). */
export const ROUND_TRIP_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export function createMetrics() {
  const registry = new Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'streamspace_gateway_' });
  const counter = (name: string, help: string, labelNames: readonly string[] = []) => new Counter(registry, name, help, labelNames);
  const gauge = (name: string, help: string, labelNames: readonly string[] = []) => new Gauge(registry, name, help, labelNames);
  const m = {
    httpRequests: counter('streamspace_http_requests_total', 'HTTP requests by route and status', ['route', 'method', 'status']),
    agentAuthFailures: counter('streamspace_agent_auth_failures_total', 'Agent sockets refused for bad credentials'),
    agentProtocolErrors: counter('streamspace_agent_protocol_errors_total', 'Malformed frames received from agents'),
    commandsSent: counter('streamspace_commands_sent_total', 'Commands delivered to agents', ['type']),
    commandsFinished: counter('streamspace_commands_finished_total', 'Commands reported finished by agents', ['outcome', 'type']),
    commandRedeliveries: counter('streamspace_command_redeliveries_total', 'Commands delivered again (reconnect or sweep) after a first delivery', ['type']),
    commandsExpired: counter('streamspace_commands_expired_total', 'Commands that expired before an agent finished them', ['type']),
    commandRoundTrip: new Histogram({
      name: 'streamspace_command_round_trip_seconds',
      help: 'From a command row being written to its result, by platform, command type and outcome',
      labelNames: ['platform', 'type', 'outcome'] as const,
      buckets: ROUND_TRIP_BUCKETS,
      registers: [registry],
    }),
    resultAcks: counter('streamspace_command_results_acknowledged_total', 'Command results acknowledged to agents, by outcome', ['outcome']),
    heartbeatBatches: counter('streamspace_agent_heartbeat_batches_total', 'Batched liveness writes (one statement for all agents that beat since the last)'),
    heartbeatsWritten: counter('streamspace_agent_heartbeats_written_total', 'Agent heartbeats recorded by the batched liveness writes'),
    reconcileReports: counter('streamspace_reconcile_divergences_total', 'Differences between what agents run and the database, by kind', ['kind']),
    /** Per agent: 1 on the series of its current status, 0 on the others (the alert reads `{status="offline"} > 0`). */
    agentStatus: gauge('streamspace_agent_status', 'Agents by status (from the database): 1 for the current status', ['agent_id', 'status']),
    agentsConnectedHere: gauge('streamspace_agents_connected', 'Agent sockets held by this pod'),
    redisConnection: gauge('streamspace_redis_connection_status', '1 when the Redis AgentHub is connected'),
    /** 1 on the backend this pod's AgentHub uses: RedisConnectionFailure only reads redis_connection_status where it is redis. */
    agentHubBackend: gauge('streamspace_agent_hub_backend', 'The AgentHub backend this pod uses (memory|redis): 1 on its series', ['backend']),
    vncActiveTunnels: gauge('streamspace_vnc_active_tunnels', 'VNC tunnels open through this pod'),
    vncBytes: counter('streamspace_vnc_bytes_total', 'VNC bytes relayed, by direction', ['direction']),
    vncConnections: counter('streamspace_vnc_connections_total', 'VNC viewer connections accepted'),
    vncConnectionFailures: counter('streamspace_vnc_connection_failures_total', 'VNC viewer connections that failed', ['reason']),
  };
  const heap = gauge('streamspace_process_heap_bytes', 'V8 heap in use by this process');
  /** Where streamspace_sessions reads its counts at each scrape (countSessionsFrom); none: the gauge has no series. */
  let sessionSource: SessionCountSource | null = null;
  const sessions = new client.Gauge({
    name: 'streamspace_sessions',
    help: 'Sessions by state and platform (from the database at each scrape; terminated sessions are not counted)',
    labelNames: ['state', 'platform'] as const,
    registers: [registry],
    async collect() {
      if (!sessionSource) return;
      try {
        const rows = await sessionSource();
        this.reset();
        for (const r of rows) this.set({ state: r.state, platform: r.platform ?? 'unknown' }, Number(r.count));
      } catch {
        // the database is unreachable: keep the last counts (the scrape still answers)
      }
    },
  });
  return {
    ...m,
    registry,
    sessions,
    /** Counts sessions for streamspace_sessions{state,platform} from this database at each scrape. */
    countSessionsFrom(db: { query: (sql: string) => Promise<{ rows: SessionCount[] }> }): void {
      sessionSource = async () =>
        (await db.query(`SELECT state, platform, count(*)::int AS count FROM sessions WHERE state <> 'terminated' GROUP BY state, platform`)).rows;
    },
    contentType: registry.contentType,
    /** The Prometheus text exposition of this registry. */
    render: async (): Promise<string> => {
      heap.set(process.memoryUsage().heapUsed);
      return registry.metrics();
    },
  };
}
export type Metrics = ReturnType<typeof createMetrics>;

export interface SessionCount {
  state: string;
  platform: string | null;
  count: number | string;
}
type SessionCountSource = () => Promise<SessionCount[]>;

/** Statuses an agent row can have; each agent gets one series per status. */
export const AGENT_STATUSES = ['online', 'offline', 'draining'] as const;

/** Replaces the agent status series with the given rows (agents removed from the database disappear). */
export function setAgentStatuses(metrics: Pick<Metrics, 'agentStatus'>, rows: readonly { agent_id: string; status: string | null }[]): void {
  metrics.agentStatus.reset();
  for (const r of rows) {
    const status = r.status ?? 'offline';
    for (const s of new Set<string>([...AGENT_STATUSES, status])) metrics.agentStatus.set(s === status ? 1 : 0, { agent_id: r.agent_id, status: s });
  }
}
