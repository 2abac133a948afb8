/** `npm run agent-token -- <agent_id>` prints a token for an agent (uses AGENT_TOKEN_SECRET / JWT_SECRET). */
import { loadGatewayConfig } from '../config';
import { TokenService } from './tokens';

const agentId = process.argv[2];
if (!agentId || !/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(agentId)) {
  console.error('usage: npm run agent-token -- <agent_id>');
  process.exit(2);
}
const cfg = loadGatewayConfig();
console.log(new TokenService(cfg.jwtSecret, cfg.agentTokenSecret, cfg.jwtTtlSeconds).signAgent(agentId));
