/**
 * `npm run agent-token -- <agent_id> [--rotate] [--expires-in 30d] [--description text]`
 *
 * Mints a recorded agent token (a row in agent_tokens, database from DATABASE_URL / DB_*) and
 * prints it; the token is not stored anywhere else. An agent id that still has a live token needs
 * --rotate (which revokes the old one: its connection is closed on every API pod).
 */
import { parseDuration } from '../../config/env';
import { createPool } from '../../db/pool';
import { loadGatewayConfig } from '../config';
import { AGENT_ID_PATTERN, AgentTokenConflict, mintAgentToken } from './agent-credentials';
import { TokenService } from './tokens';

const USAGE = 'usage: npm run agent-token -- <agent_id> [--rotate] [--expires-in <duration, e.g. 30d>] [--description <text>]';

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  let agentId: string | undefined;
  let rotate = false;
  let expiresInSeconds: number | undefined;
  let description: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--rotate') rotate = true;
    else if (a === '--expires-in') expiresInSeconds = Math.ceil(parseDuration(args[++i] ?? '', '--expires-in') / 1000);
    else if (a === '--description') description = args[++i];
    else if (!a.startsWith('-') && !agentId) agentId = a;
    else {
      console.error(USAGE);
      return 2;
    }
  }
  if (!agentId || !new RegExp(AGENT_ID_PATTERN).test(agentId)) {
    console.error(USAGE);
    return 2;
  }
  const cfg = loadGatewayConfig();
  const pool = createPool(cfg.databaseUrl);
  try {
    const m = await mintAgentToken(pool, new TokenService(cfg.jwtSecret, cfg.agentTokenSecret, cfg.jwtTtlSeconds), {
      agentId,
      rotate,
      expiresInSeconds,
      description,
      createdBy: 'agent-token-cli',
    });
    if (m.revoked.length) console.error(`revoked ${m.revoked.join(', ')}`);
    console.error(`token ${m.record.id} for ${agentId}${m.record.expires_at ? `, expires ${m.record.expires_at.toISOString()}` : ''}`);
    console.log(m.token);
    return 0;
  } catch (err) {
    console.error(err instanceof AgentTokenConflict ? `${err.message.split(';')[0]}; pass --rotate to replace it` : `agent-token: ${(err as Error).message}`);
    return 1;
  } finally {
    await pool.end();
  }
}

main().then(
  (code) => process.exit(code),
  (err: Error) => {
    console.error(`agent-token: ${err.message}`);
    process.exit(1);
  },
);
