/**
 * Credentials. Users get short-lived HS256 JWTs (typ "user"); agents present long-lived tokens
 * (typ "agent", signed with a separate secret) bound to one agent_id. Each side checks typ, so a
 * browser token never opens an agent socket and an agent token never calls the user API.
 */
import { createSecretKey, KeyObject, randomBytes, scrypt as scryptCb, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';
import bcrypt from 'bcryptjs';
import jwt from 'jsonwebtoken';

const scrypt = promisify(scryptCb) as (pw: string, salt: Buffer, keylen: number) => Promise<Buffer>;

export type Role = 'admin' | 'user';
export interface UserClaims {
  /** The username. */
  sub: string;
  role: Role;
  typ: 'user';
}

/** The signed-in user as the gateway knows them on this request (read from `users`, not the token). */
export interface RequestUser extends UserClaims {
  /** users.id: what sessions.user_id holds (a uuid string on v1 databases; 'admin' for v1's seeded admin). */
  uid: string;
}
export interface AgentClaims {
  sub: string;
  typ: 'agent';
  /** The agent_tokens row this token belongs to (tokens without one are refused by the gateway). */
  jti?: string;
}

export class TokenError extends Error {}

export class TokenService {
  // Key objects made once: given a string, jsonwebtoken first tries (and fails) to parse it as a
  // PEM public key on every call, about 2 ms of CPU per request.
  private readonly userSecret: KeyObject;
  private readonly agentSecret: KeyObject;
  constructor(
    userSecret: string,
    agentSecret: string,
    private readonly userTtlSeconds: number,
  ) {
    this.userSecret = createSecretKey(Buffer.from(userSecret));
    this.agentSecret = createSecretKey(Buffer.from(agentSecret));
  }

  signUser(username: string, role: Role, ttlSeconds = this.userTtlSeconds): string {
    return jwt.sign({ role, typ: 'user' }, this.userSecret, { algorithm: 'HS256', subject: username, expiresIn: ttlSeconds });
  }

  verifyUser(token: string): UserClaims {
    const claims = this.verify(token, this.userSecret);
    if (claims.typ !== 'user' || (claims.role !== 'admin' && claims.role !== 'user') || typeof claims.sub !== 'string')
      throw new TokenError('not a user token');
    return claims as unknown as UserClaims;
  }

  /**
   * Signs an agent token. The signature alone admits nobody: the gateway also requires its
   * agent_tokens record (see agent-credentials.ts), found by the token's sha256. `n` is a random
   * nonce, so a token cannot be rebuilt from its record and the key.
   */
  signAgent(agentId: string, opts: { tokenId?: string; expiresInSeconds?: number } = {}): string {
    return jwt.sign({ typ: 'agent', n: randomBytes(16).toString('base64url') }, this.agentSecret, {
      algorithm: 'HS256',
      subject: agentId,
      ...(opts.tokenId ? { jwtid: opts.tokenId } : {}),
      ...(opts.expiresInSeconds ? { expiresIn: opts.expiresInSeconds } : {}),
    });
  }

  verifyAgent(token: string): AgentClaims {
    const claims = this.verify(token, this.agentSecret);
    if (claims.typ !== 'agent' || typeof claims.sub !== 'string') throw new TokenError('not an agent token');
    return claims as unknown as AgentClaims;
  }

  private verify(token: string, secret: KeyObject): Record<string, unknown> {
    try {
      const decoded = jwt.verify(token, secret, { algorithms: ['HS256'] });
      if (typeof decoded !== 'object' || decoded === null) throw new TokenError('malformed token');
      return decoded as Record<string, unknown>;
    } catch (err) {
      if (err instanceof TokenError) throw err;
      if (err instanceof jwt.TokenExpiredError) throw new TokenError('token expired');
      throw new TokenError('invalid token');
    }
  }
}

/** scrypt with a random salt: "scrypt$<salt b64>$<hash b64>". */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scrypt(password, salt, 32);
  return `scrypt$${salt.toString('base64')}$${hash.toString('base64')}`;
}

/** bcrypt as StreamSpace v1 stored it (golang.org/x/crypto/bcrypt: `$2a$`, also `$2b$`/`$2y$`). */
const BCRYPT = /^\$2[aby]\$\d{2}\$[./A-Za-z0-9]{53}$/;

/**
 * Checks a password against a stored hash: v2's scrypt, or v1's bcrypt. v1 hashes are kept as they
 * are (not re-hashed on login), so a v1 still serving the same database during a blue-green
 * migration keeps accepting the same password.
 */
export async function verifyPassword(password: string, stored: string | null): Promise<boolean> {
  if (!stored) return false;
  if (BCRYPT.test(stored)) return bcrypt.compare(password, stored);
  const [scheme, saltB64, hashB64] = stored.split('$');
  if (scheme !== 'scrypt' || !saltB64 || !hashB64) return false;
  const expected = Buffer.from(hashB64, 'base64');
  const actual = await scrypt(password, Buffer.from(saltB64, 'base64'), expected.length);
  return timingSafeEqual(actual, expected);
}

export function bearer(header: string | undefined): string | null {
  if (!header) return null;
  const m = /^Bearer\s+(\S+)$/i.exec(header);
  return m ? m[1] : null;
}
