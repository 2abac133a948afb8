/**
 * Kubernetes agent process: `node dist/agents/kubernetes/main.js` (env as in the spec's K8s agent
 * section). With ENABLE_HA=true every replica campaigns for the Lease; only the leader holds the
 * control-plane connection and acts. SIGTERM releases the Lease for an immediate hand-over.
 */
import { KubeConfig } from '@kubernetes/client-node';
import { randomUUID } from 'node:crypto';
import { AGENT_SECRETS, envBool, envDuration, envOptional, envString, requireSecrets } from '../../config/env';
import { createLogger } from '../../config/log';
import { loadAgentConfig } from '../common/config';
import { AgentRuntime } from '../common/runtime';
import { attachTunnel } from '../common/tunnel';
import { KubernetesDriver } from './driver';
import { LeaderElector, validateLeaderTimings } from './leader';
import { onShutdown, runMain } from '../../config/process';

async function main() {
  requireSecrets('k8s-agent', AGENT_SECRETS);
  const log = createLogger('k8s-agent');
  const config = loadAgentConfig('kubernetes');
  const kc = new KubeConfig();
  const kubeconfig = envOptional('KUBECONFIG');
  if (kubeconfig) kc.loadFromFile(kubeconfig);
  else kc.loadFromCluster();
  const namespace = envString('NAMESPACE', 'streamspace');
  const ha = envBool('ENABLE_HA', false);
  // Checked before anything starts: RENEW_DEADLINE < LEASE_DURATION, or a follower could take over
  // while this replica still acts.
  const timings = {
    leaseDurationMs: envDuration('LEASE_DURATION', '15s'),
    renewDeadlineMs: envDuration('RENEW_DEADLINE', '10s'),
    retryPeriodMs: envDuration('RETRY_PERIOD', '2s'),
  };
  if (ha) validateLeaderTimings(timings);
  const driver = new KubernetesDriver({
    kubeConfig: kc,
    namespace,
    agentId: config.agentId,
    homeSize: envString('HOME_VOLUME_SIZE', '5Gi'),
    storageClass: envOptional('STORAGE_CLASS') ?? null,
    podReadyTimeoutMs: envDuration('POD_READY_TIMEOUT', '5m'),
    log,
  });
  await driver.init();
  const runtime = new AgentRuntime(config, driver, log);
  attachTunnel(runtime, log);

  let elector: LeaderElector | null = null;
  // streamspace_agent_leader_status{agent_id}: 1 while this replica leads, 0 while it follows (the
  // NoAgentLeader alert: max by (agent_id) == 0, or absent). Without HA the one replica always leads.
  const leading = (on: boolean) => runtime.metrics.leaderStatus.set({ agent_id: config.agentId }, on ? 1 : 0);
  leading(!ha);
  await runtime.startHealthServer(
    () => ({ ha, leader: elector ? elector.isLeader : true }),
    // HA: the leader is ready once registered; a follower once it could take over (Lease API reachable).
    () => (elector ? (elector.isLeader ? runtime.isRegistered : elector.canLead) : runtime.isRegistered),
  );
  if (ha) {
    elector = new LeaderElector({
      kubeConfig: kc,
      namespace: envString('LEASE_LOCK_NAMESPACE', namespace),
      name: envString('LEASE_LOCK_NAME', 'k8s-agent-leader'),
      // Unique per process, like client-go's "<pod>_<uuid>": a restarted pod is a new candidate.
      identity: `${config.identity}_${randomUUID().slice(0, 8)}`,
      ...timings,
      log,
      onStartedLeading: () => {
        leading(true);
        runtime.start();
      },
      onStoppedLeading: () => {
        leading(false);
        return runtime.stop({ keepHealth: true });
      },
    });
    await elector.start();
  } else {
    runtime.start();
  }
  onShutdown(async () => {
    if (elector) await elector.stop(); // releases the Lease for an immediate hand-over
    await runtime.stop();
  });
}

runMain(main);
