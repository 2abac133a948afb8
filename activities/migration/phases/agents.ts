/** Phase 4, agents: wait (heartbeating) until every platform in use has an online v2 agent. */
import { pause, redacting, v2DatabaseUrl, withDb } from '../common';
import type { MigrationOptions } from '../../../workflows/migration-api';

export function agentsActivities() {
  return redacting({
    async waitForAgents(o: MigrationOptions): Promise<Record<string, string[]>> {
      const url = await v2DatabaseUrl(o);
      for (;;) {
        const online = await withDb(url, async (c) => {
          const r = await c.query(`SELECT agent_id, platform FROM agents WHERE status = 'online' AND last_heartbeat > NOW() - INTERVAL '2 minutes'`);
          return r.rows as Array<{ agent_id: string; platform: string }>;
        });
        const byPlatform: Record<string, string[]> = {};
        for (const p of o.v2.platforms) byPlatform[p] = online.filter((a) => a.platform === p).map((a) => a.agent_id);
        const missing = o.v2.platforms.filter((p) => !byPlatform[p].length);
        if (!missing.length) return byPlatform;
        // Heartbeats, and ends at once when the run is rolled back or aborted (cancellation).
        await pause(1000, { waitingFor: missing });
      }
    },
  });
}
