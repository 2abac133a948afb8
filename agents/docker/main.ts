/**
 * Docker agent process: `node dist/agents/docker/main.js` (env as in the spec's Docker agent section).
 * With ENABLE_HA=true several processes with the same AGENT_ID manage one Docker engine: they elect
 * a leader through HA_BACKEND=redis|file (agents/common/ha.ts); only the leader connects to the
 * control plane and touches Docker. SIGTERM releases the lease for an immediate hand-over.
 */
import { AGENT_SECRETS, envDuration, envInt, envString, requireSecrets } from '../../config/env';
import { createLogger } from '../../config/log';
import { loadAgentConfig } from '../common/config';
import { haConfigOrRefuse, startAgent } from '../common/ha-main';
import { attachTunnel } from '../common/tunnel';
import { DockerDriver } from './driver';
import { runMain } from '../../config/process';

async function main() {
  requireSecrets('docker-agent', AGENT_SECRETS);
  const log = createLogger('docker-agent');
  const config = loadAgentConfig('docker');
  // Before anything starts: HA_BACKEND=swarm (or a bad lease timing) refuses with exit 78.
  const ha = haConfigOrRefuse('docker-agent', config.agentId);
  const prefix = envString('NETWORK_PREFIX', 'streamspace');
  const range = envString('VNC_PORT_RANGE', '15900-15999').split('-').map(Number);
  if (range.length !== 2 || !range.every(Number.isInteger) || range[0] > range[1]) throw new Error('VNC_PORT_RANGE must look like 15900-15999');
  const driver = new DockerDriver({
    agentId: config.agentId,
    dockerHost: envString('DOCKER_HOST', 'unix:///var/run/docker.sock'),
    networkPrefix: prefix,
    network: envString('DOCKER_NETWORK', prefix),
    vncPortRange: [range[0], range[1]],
    vncListen: envString('VNC_LISTEN', '127.0.0.1'),
    vncReadyTimeoutMs: envDuration('VNC_READY_TIMEOUT', '60s'),
    stopTimeoutSeconds: envInt('STOP_TIMEOUT_SECONDS', 5),
    maxSessions: config.capacity.max_sessions,
    log,
  });
  log.info(ha ? `Docker Agent starting (HA mode: ${ha.backend})` : 'Docker Agent starting', { agent: config.agentId, control_plane: config.controlPlaneUrl });
  await driver.init();
  await startAgent({
    config,
    driver,
    log,
    ha,
    prepare: (runtime) => attachTunnel(runtime, log),
    // The engine is shared: nothing to re-read (the driver asks Docker every time), but check it answers.
    beforeLeading: () => driver.init(),
  });
  log.info(`Agent ID: ${config.agentId}`);
}

runMain(main);
