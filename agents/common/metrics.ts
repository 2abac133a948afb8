/**
 * The agents' Prometheus metrics (prom-client): what each agent did with the commands it was sent,
 * and whether it leads (Kubernetes HA). Served at the agent's health port /metrics.
 */
import client, { Counter, Gauge, Registry } from 'prom-client';

export function createAgentMetrics() {
  const registry = new Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'streamspace_agent_' });
  const registers = [registry];
  return {
    registry,
    commandsExecuted: new Counter({
      name: 'streamspace_agent_commands_executed_total',
      help: 'Commands this agent ran, by command type and outcome (completed|failed)',
      labelNames: ['type', 'outcome'] as const,
      registers,
    }),
    commandsRefused: new Counter({
      name: 'streamspace_agent_commands_refused_total',
      help: 'Commands this agent refused to run, by command type and reason (expired|withdrawn|stale)',
      labelNames: ['type', 'reason'] as const,
      registers,
    }),
    resultsResent: new Counter({
      name: 'streamspace_agent_results_resent_total',
      help: 'Command results sent again because the control plane had not acknowledged them',
      registers,
    }),
    leaderStatus: new Gauge({
      name: 'streamspace_agent_leader_status',
      help: '1 while this replica holds the leader lease, 0 while it follows',
      labelNames: ['agent_id'] as const,
      registers,
    }),
    contentType: registry.contentType,
    /** The Prometheus text exposition of this registry. */
    render: (): Promise<string> => registry.metrics(),
  };
}
export type AgentMetrics = ReturnType<typeof createAgentMetrics>;
