/** Phase 6, cut-over: the routing every API pod reads (Redis), and the health gates for auto-approval. */
import { MigrationActivityDeps, redacting, v2DatabaseUrl, withDb, withRedis } from '../common';
import { ROUTING_KEY, RoutingState } from '../routing-state';
import type { MigrationOptions } from '../../../workflows/migration-api';

export function cutoverActivities(deps: MigrationActivityDeps) {
  return redacting({
    async setRouting(state: Omit<RoutingState, 'updatedAt'>): Promise<void> {
      await withRedis(deps.redisUrl, (r) => r.set(ROUTING_KEY, JSON.stringify({ ...state, updatedAt: new Date().toISOString() })));
    },

    /** Health gates for auto-approval: session failure rate, agents online, v2 ready. */
    async checkHealthGates(o: MigrationOptions): Promise<{ ok: boolean; reasons: string[] }> {
      const reasons: string[] = [];
      await withDb(await v2DatabaseUrl(o), async (c) => {
        const r = await c.query(
          `SELECT count(*) FILTER (WHERE state = 'failed')::int AS failed, count(*)::int AS total FROM sessions WHERE created_at > NOW() - INTERVAL '1 hour'`,
        );
        const { failed, total } = r.rows[0];
        if (total && failed / total > o.approval.maxSessionFailureRate)
          reasons.push(`session failure rate ${((failed / total) * 100).toFixed(1)}% > ${(o.approval.maxSessionFailureRate * 100).toFixed(1)}%`);
        for (const p of o.v2.platforms) {
          const a = await c.query(`SELECT 1 FROM agents WHERE platform = $1 AND status = 'online' LIMIT 1`, [p]);
          if (!a.rowCount) reasons.push(`no ${p} agent online`);
        }
      });
      const ready = await fetch(o.v2.readyUrl, { signal: AbortSignal.timeout(5000), redirect: 'manual' }).then(
        (r) => r.ok,
        () => false,
      );
      if (!ready) reasons.push('v2 control plane not ready');
      return { ok: reasons.length === 0, reasons };
    },
  });
}
