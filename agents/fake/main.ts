/**
 * A protocol-faithful agent without containers: `node dist/agents/fake/main.js` with the Docker
 * agent's environment plus FAKE_START_DELAY (default 20ms), FAKE_OP_DELAY (default 5ms), FAKE_RUN_DELAY (default 0: created running),
 * FAKE_STATE_FILE and FAKE_EVENTS_FILE (see agents/fake/driver.ts). For tests, chaos runs and
 * benchmarks only: it registers as a docker agent. ENABLE_HA works as in the Docker agent (the
 * same agents/common/ha-main.ts); replicas sharing FAKE_STATE_FILE share one "engine".
 */
import { AGENT_SECRETS, envDuration, envOptional, requireSecrets } from '../../config/env';
import { createLogger } from '../../config/log';
import { runMain } from '../../config/process';
import { loadAgentConfig } from '../common/config';
import { haConfigOrRefuse, startAgent } from '../common/ha-main';
import { FakeDriver } from './driver';

async function main() {
  requireSecrets('fake-agent', AGENT_SECRETS);
  const log = createLogger('fake-agent');
  const config = loadAgentConfig('docker');
  const ha = haConfigOrRefuse('fake-agent', config.agentId);
  const driver = new FakeDriver({
    agentId: config.agentId,
    maxSessions: config.capacity.max_sessions,
    startDelayMs: envDuration('FAKE_START_DELAY', '20ms'),
    opDelayMs: envDuration('FAKE_OP_DELAY', '5ms'),
    runDelayMs: envDuration('FAKE_RUN_DELAY', '0ms'),
    stateFile: envOptional('FAKE_STATE_FILE'),
    eventsFile: envOptional('FAKE_EVENTS_FILE'),
  });
  await driver.init();
  log.info(`Fake agent ${config.agentId} starting`, { control_plane: config.controlPlaneUrl, ...(ha ? { ha: ha.backend } : {}) });
  // HA: the state file is the shared "engine"; a new leader reads what the previous one left.
  await startAgent({ config, driver, log, ha, beforeLeading: () => driver.init() });
}

runMain(main);
