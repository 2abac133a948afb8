/** Docker agent process: `node dist/agents/docker/main.js` (env as in the spec's Docker agent section). */
import { AGENT_SECRETS, envDuration, envInt, envString, requireSecrets } from '../../config/env';
import { createLogger } from '../../config/log';
import { loadAgentConfig } from '../common/config';
import { AgentRuntime } from '../common/runtime';
import { attachTunnel } from '../common/tunnel';
import { DockerDriver } from './driver';
import { onShutdown, runMain } from '../../config/process';

async function main() {
  requireSecrets('docker-agent', AGENT_SECRETS);
  const log = createLogger('docker-agent');
  const config = loadAgentConfig('docker');
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
  log.info('Docker Agent starting', { agent: config.agentId, control_plane: config.controlPlaneUrl });
  await driver.init();
  const runtime = new AgentRuntime(config, driver, log);
  attachTunnel(runtime, log);
  await runtime.startHealthServer();
  runtime.start();
  log.info(`Agent ID: ${config.agentId}`);
  onShutdown(() => runtime.stop());
}

runMain(main);
