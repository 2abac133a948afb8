/**
 * Starts a docker-platform agent (the Docker agent, and the fake agent that tests use in its place)
 * with or without ENABLE_HA: the runtime, its health server and, in HA mode, the leader election
 * that decides when this replica connects to the control plane and may touch the engine.
 */
import path from 'node:path';
import { refuseToStart } from '../../config/env';
import type { Logger } from '../../config/log';
import { onShutdown } from '../../config/process';
import { AgentConfig, HaConfig, loadHaConfig } from './config';
import type { SessionDriver } from './driver';
import { FencedDriver, HaElector, LeaseBackend, newCandidate, validateHaTimings } from './ha';
import { FileLease } from './lease-file';
import { RedisLease } from './lease-redis';
import { AgentRuntime } from './runtime';

/** ENABLE_HA settings, or a one-line refusal (exit 78) naming what is wrong. */
export function haConfigOrRefuse(component: string, agentId: string, env: NodeJS.ProcessEnv = process.env): HaConfig | null {
  try {
    const ha = loadHaConfig(agentId, env);
    if (ha) validateHaTimings(ha);
    return ha;
  } catch (err) {
    return refuseToStart(component, (err as Error).message);
  }
}

/** Keeps a replica's journal apart from the other replicas' (the journal tolerates one writer only). */
const replicaDir = (base: string, identity: string) => path.join(base, 'replicas', identity.replace(/[^A-Za-z0-9_.-]/g, '_'));

export interface StartOptions {
  config: AgentConfig;
  driver: SessionDriver;
  log: Logger;
  ha: HaConfig | null;
  /** Called on the runtime before anything connects (e.g. attachTunnel). */
  prepare?: (runtime: AgentRuntime) => void;
  /** Run before this replica starts leading (e.g. re-read engine state another replica changed). */
  beforeLeading?: () => Promise<void>;
  env?: NodeJS.ProcessEnv;
}

/** Starts the agent; returns its runtime (and the elector in HA mode). Registers the SIGTERM handler. */
export async function startAgent(o: StartOptions): Promise<{ runtime: AgentRuntime; elector: HaElector | null }> {
  const env = o.env ?? process.env;
  const { config, log, ha } = o;
  if (!ha) {
    const runtime = new AgentRuntime(config, o.driver, log, env);
    o.prepare?.(runtime);
    // Without HA this process is its agent's only replica: it leads.
    runtime.metrics.leaderStatus.set({ agent_id: config.agentId }, 1);
    await runtime.startHealthServer();
    runtime.start();
    onShutdown(() => runtime.stop());
    return { runtime, elector: null };
  }

  config.identity = ha.identity;
  const candidate = newCandidate(ha.identity);
  // Followers keep their own journal: two processes appending to (and compacting) one file would lose entries.
  const runtimeEnv = ha.stateBase ? { ...env, AGENT_STATE_DIR: replicaDir(ha.stateBase, ha.identity) } : env;
  let elector: HaElector | null = null;
  const fenced = new FencedDriver(o.driver, {
    canAct: () => !!elector?.canAct(),
    actUntil: () => elector?.actUntil() ?? -Infinity,
    get signal() {
      return elector!.signal;
    },
    get fencingToken() {
      return elector?.fencingToken ?? null;
    },
  });
  const runtime = new AgentRuntime(config, fenced, log, runtimeEnv);
  runtime.registrationMetadata = () => ({ ha: true, ha_backend: ha.backend, ha_fencing_token: elector?.fencingToken ?? null });
  o.prepare?.(runtime);
  const backend: LeaseBackend =
    ha.backend === 'redis'
      ? new RedisLease(ha.redisUrl!, config.agentId, candidate, ha.leaseDurationMs, ha.retryPeriodMs, log)
      : new FileLease(ha.lockFile, candidate, ha.leaseDurationMs, log);
  elector = new HaElector({
    backend,
    candidate,
    leaseDurationMs: ha.leaseDurationMs,
    renewDeadlineMs: ha.renewDeadlineMs,
    retryPeriodMs: ha.retryPeriodMs,
    agentId: config.agentId,
    log,
    metrics: runtime.metrics,
    onStartedLeading: async () => {
      await o.beforeLeading?.();
      runtime.start();
    },
    // Only the leader holds a control-plane connection; /health, /ready and /metrics stay up.
    onStoppedLeading: () => runtime.stop({ keepHealth: true }),
  });
  const el = elector;
  await runtime.startHealthServer(
    () => ({ ha: true, backend: ha.backend, identity: ha.identity, leader: el.isLeader }),
    // The leader is ready once registered; a follower once it could take over (lease store reachable).
    () => (el.isLeader ? runtime.isRegistered : el.canLead),
  );
  onShutdown(async () => {
    await el.stop(); // stops acting, then releases the lease for an immediate hand-over
    await runtime.stop();
  });
  await el.start();
  return { runtime, elector: el };
}
