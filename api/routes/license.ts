/**
 * GET /api/v1/license (admins): the active v1 licence (db/quota.ts: v1's rule), its limits, what
 * they count now and when it expires. No licenses table or no active row: `licensed: false`,
 * nothing is limited.
 */
import type { FastifyInstance } from 'fastify';
import { activeLicense, licensedSessions, licensedUsers } from '../../db/quota';
import { LicenseSchema } from '../audit/schemas';
import { ErrorSchema } from '../schemas';

export async function licenseRoutes(app: FastifyInstance): Promise<void> {
  app.get(
    '/api/v1/license',
    {
      onRequest: app.requireAdmin,
      schema: { tags: ['license'], security: [{ bearer: [] }], response: { 200: LicenseSchema, 401: ErrorSchema, 403: ErrorSchema } },
    },
    async () => {
      const { pool } = app.deps;
      const lic = await activeLicense(pool);
      const nodes = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM agents WHERE status = 'online'`);
      const usage = { users: await licensedUsers(pool), sessions: await licensedSessions(pool), nodes: nodes.rows[0].n };
      const limits = { max_users: lic?.max_users ?? null, max_sessions: lic?.max_sessions ?? null, max_nodes: lic?.max_nodes ?? null };
      const warnings: string[] = [];
      for (const [name, used, max] of [
        ['users', usage.users, limits.max_users],
        ['sessions', usage.sessions, limits.max_sessions],
        ['nodes', usage.nodes, limits.max_nodes],
      ] as const) {
        if (max === null || max <= 0) continue;
        const pct = (used / max) * 100;
        if (pct >= 80) warnings.push(`${pct >= 100 ? 'limit reached' : pct >= 90 ? 'critical' : 'warning'}: ${used} of ${max} ${name} (${pct.toFixed(1)}%)`);
      }
      if (lic?.expired) warnings.unshift(`license expired on ${(lic.expires_at ?? '').slice(0, 10)}: new users and sessions are refused`);
      const expiresMs = lic?.expires_at ? Date.parse(lic.expires_at) : NaN;
      return {
        licensed: lic !== null,
        tier: lic?.tier ?? null,
        license_key: lic ? mask(lic.license_key) : null,
        status: lic?.status ?? null,
        issued_at: lic?.issued_at ?? null,
        activated_at: lic?.activated_at ?? null,
        expires_at: lic?.expires_at ?? null,
        expired: lic?.expired ?? false,
        days_until_expiry: Number.isFinite(expiresMs) ? Math.floor((expiresMs - Date.now()) / 86_400_000) : null,
        limits,
        usage,
        warnings,
      };
    },
  );
}

/** A licence key is a credential: only its last 4 characters are shown. */
function mask(key: string): string {
  return key.length <= 4 ? '****' : `${'*'.repeat(Math.min(12, key.length - 4))}${key.slice(-4)}`;
}
