/** A small Prometheus text-format registry: counters and gauges with labels, served at /metrics. */
type Labels = Record<string, string>;

const key = (labels: Labels) =>
  Object.keys(labels)
    .sort()
    .map((k) => `${k}="${String(labels[k]).replace(/["\\\n]/g, '_')}"`)
    .join(',');

abstract class Metric {
  protected readonly values = new Map<string, number>();
  constructor(
    readonly name: string,
    readonly help: string,
    readonly kind: 'counter' | 'gauge',
  ) {}
  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.kind}`];
    if (this.values.size === 0 && this.kind === 'counter') lines.push(`${this.name} 0`);
    for (const [k, v] of this.values) lines.push(k ? `${this.name}{${k}} ${v}` : `${this.name} ${v}`);
    return lines.join('\n');
  }
  get(labels: Labels = {}): number {
    return this.values.get(key(labels)) ?? 0;
  }
}

export class Counter extends Metric {
  constructor(name: string, help: string) {
    super(name, help, 'counter');
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
}

export class Gauge extends Metric {
  constructor(name: string, help: string) {
    super(name, help, 'gauge');
  }
  set(value: number, labels: Labels = {}): void {
    this.values.set(key(labels), value);
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    this.values.set(k, (this.values.get(k) ?? 0) + by);
  }
  dec(labels: Labels = {}, by = 1): void {
    this.inc(labels, -by);
  }
}

export function createMetrics() {
  const m = {
    httpRequests: new Counter('streamspace_http_requests_total', 'HTTP requests by route and status'),
    agentAuthFailures: new Counter('streamspace_agent_auth_failures_total', 'Agent sockets refused for bad credentials'),
    agentProtocolErrors: new Counter('streamspace_agent_protocol_errors_total', 'Malformed frames received from agents'),
    commandsSent: new Counter('streamspace_commands_sent_total', 'Commands delivered to agents'),
    commandsFinished: new Counter('streamspace_commands_finished_total', 'Commands reported finished by agents'),
    sessionFailures: new Counter('streamspace_session_failures_total', 'Sessions that ended in state failed'),
    agentStatus: new Gauge('streamspace_agent_status', 'Agents by status (from the database)'),
    agentsConnectedHere: new Gauge('streamspace_agents_connected', 'Agent sockets held by this pod'),
    redisConnection: new Gauge('streamspace_redis_connection_status', '1 when the Redis AgentHub is connected'),
    vncActiveTunnels: new Gauge('streamspace_vnc_active_tunnels', 'VNC tunnels open through this pod'),
    vncBytes: new Counter('streamspace_vnc_bytes_total', 'VNC bytes relayed, by direction'),
    vncConnections: new Counter('streamspace_vnc_connections_total', 'VNC viewer connections accepted'),
    vncConnectionFailures: new Counter('streamspace_vnc_connection_failures_total', 'VNC viewer connections that failed'),
  };
  const heap = new Gauge('streamspace_process_heap_bytes', 'V8 heap in use by this process');
  return {
    ...m,
    render: () => {
      heap.set(process.memoryUsage().heapUsed);
      return [...Object.values(m), heap].map((x) => x.render()).join('\n') + '\n';
    },
  };
}
export type Metrics = ReturnType<typeof createMetrics>;
