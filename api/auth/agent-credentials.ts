/**
 * Agent credentials as records (table agent_tokens, migration 006). A token is a signed JWT
 * (typ "agent", sub = agent id, jti = record id) and is accepted only while its record exists, is
 * not revoked and has not expired. Only sha256(token) is stored; the token is shown once.
 *
 * One live token per agent id: minting another needs an explicit rotate, which revokes the old
 * ones in the same transaction. Revoking (an UPDATE of revoked_at, from here or from psql) fires
 * NOTIFY agent_token_revoked <id> (a trigger), and every API pod closes sockets using that token.
 */
import { createHash, randomUUID } from 'node:crypto';
import type { Pool, PoolClient } from 'pg';
import { TokenError, TokenService } from './tokens';

export const AGENT_TOKEN_REVOKED_CHANNEL = 'agent_token_revoked';
export const AGENT_ID_PATTERN = '^[A-Za-z0-9][A-Za-z0-9._-]*$';

export interface AgentTokenRecord {
  id: string;
  agent_id: string;
  description: string | null;
  created_by: string | null;
  created_at: Date;
  expires_at: Date | null;
  last_used_at: Date | null;
  revoked_at: Date | null;
  revoked_reason: string | null;
}

const COLUMNS = 'id::text, agent_id, description, created_by, created_at, expires_at, last_used_at, revoked_at, revoked_reason';

export function hashAgentToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** Minting for an agent id that still has a live token, without rotate. */
export class AgentTokenConflict extends Error {
  constructor(
    readonly agentId: string,
    readonly liveIds: string[],
  ) {
    super(
      `agent "${agentId}" already has a live token (${liveIds.join(', ')}); rotate it (POST /api/v1/agents/${agentId}/tokens/rotate or {"rotate": true}) or revoke it first`,
    );
  }
}

export interface MintOptions {
  agentId: string;
  /** Revoke the agent's live tokens and mint a new one; without it a live token is a conflict. */
  rotate?: boolean;
  expiresInSeconds?: number;
  description?: string;
  createdBy?: string;
}

export interface Minted {
  token: string;
  record: AgentTokenRecord;
  /** Ids of the tokens this rotation revoked. */
  revoked: string[];
}

/** Mints a recorded agent token (serialised per agent id, so two mints cannot both win). */
export async function mintAgentToken(pool: Pool, tokens: TokenService, o: MintOptions): Promise<Minted> {
  if (!new RegExp(AGENT_ID_PATTERN).test(o.agentId) || o.agentId.length > 255) throw new TokenError(`invalid agent id "${o.agentId}"`);
  const client = await pool.connect();
  try {
    await client.query('BEGIN');
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('agent_tokens:' || $1))`, [o.agentId]);
    const live = await client.query<{ id: string }>(
      `SELECT id::text FROM agent_tokens WHERE agent_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > NOW()) ORDER BY created_at`,
      [o.agentId],
    );
    const liveIds = live.rows.map((r) => r.id);
    if (liveIds.length && !o.rotate) throw new AgentTokenConflict(o.agentId, liveIds);
    const revoked = liveIds.length ? await revokeWith(client, o.agentId, liveIds, 'rotated') : [];
    const id = randomUUID();
    const token = tokens.signAgent(o.agentId, { tokenId: id, expiresInSeconds: o.expiresInSeconds });
    const r = await client.query<AgentTokenRecord>(
      `INSERT INTO agent_tokens (id, agent_id, token_hash, description, created_by, expires_at)
       VALUES ($1, $2, $3, $4, $5, CASE WHEN $6::int IS NULL THEN NULL ELSE NOW() + $6::int * INTERVAL '1 second' END)
       RETURNING ${COLUMNS}`,
      [id, o.agentId, hashAgentToken(token), o.description ?? null, o.createdBy ?? null, o.expiresInSeconds ?? null],
    );
    await client.query('COMMIT');
    return { token, record: r.rows[0], revoked };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release();
  }
}

async function revokeWith(db: Pool | PoolClient, agentId: string, ids: string[], reason: string): Promise<string[]> {
  const r = await db.query<{ id: string }>(
    `UPDATE agent_tokens SET revoked_at = NOW(), revoked_reason = $3
      WHERE agent_id = $1 AND id = ANY($2::uuid[]) AND revoked_at IS NULL RETURNING id::text`,
    [agentId, ids, reason],
  );
  return r.rows.map((x) => x.id);
}

/** Revokes one token of an agent; null when there is no such token (an already revoked one is returned as it is). */
export async function revokeAgentToken(pool: Pool, agentId: string, tokenId: string, reason = 'revoked'): Promise<AgentTokenRecord | null> {
  await revokeWith(pool, agentId, [tokenId], reason);
  const r = await pool.query<AgentTokenRecord>(`SELECT ${COLUMNS} FROM agent_tokens WHERE agent_id = $1 AND id = $2`, [agentId, tokenId]);
  return r.rows[0] ?? null;
}

export async function listAgentTokens(pool: Pool, agentId: string): Promise<AgentTokenRecord[]> {
  return (await pool.query<AgentTokenRecord>(`SELECT ${COLUMNS} FROM agent_tokens WHERE agent_id = $1 ORDER BY created_at`, [agentId])).rows;
}

export interface AgentIdentity {
  agentId: string;
  tokenId: string;
}

/**
 * Checks an agent token: signature and typ, then its record (live, same agent). Records last use.
 * Throws TokenError with the reason (unknown, revoked, expired).
 */
export async function authenticateAgent(pool: Pool, tokens: TokenService, token: string): Promise<AgentIdentity> {
  const claims = tokens.verifyAgent(token);
  const hash = hashAgentToken(token);
  const r = await pool.query<{ id: string; agent_id: string }>(
    `UPDATE agent_tokens SET last_used_at = NOW()
      WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > NOW())
      RETURNING id::text, agent_id`,
    [hash],
  );
  const row = r.rows[0];
  if (row) {
    if (row.agent_id !== claims.sub || (claims.jti && claims.jti !== row.id)) throw new TokenError('agent token does not match its record');
    return { agentId: row.agent_id, tokenId: row.id };
  }
  const dead = await pool.query<{ revoked_at: Date | null }>('SELECT revoked_at FROM agent_tokens WHERE token_hash = $1', [hash]);
  if (!dead.rows[0]) throw new TokenError('agent token is not recorded (mint one with POST /api/v1/agents/tokens or npm run agent-token)');
  throw new TokenError(dead.rows[0].revoked_at ? 'agent token revoked' : 'agent token expired');
}

/** Of the given token ids, those no longer live (revoked, expired or gone). */
export async function deadAgentTokens(pool: Pool, tokenIds: string[]): Promise<string[]> {
  if (!tokenIds.length) return [];
  const r = await pool.query<{ id: string }>(
    `SELECT t.id FROM unnest($1::uuid[]) AS t(id)
      WHERE NOT EXISTS (SELECT 1 FROM agent_tokens a WHERE a.id = t.id AND a.revoked_at IS NULL AND (a.expires_at IS NULL OR a.expires_at > NOW()))`,
    [tokenIds],
  );
  return r.rows.map((x) => String(x.id));
}
