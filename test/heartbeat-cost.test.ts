/**
 * Heartbeats cost O(pods × intervals), not O(agents × beats) (issue 14, part 4).
 *
 * N protocol-faithful fake agents (bench/fake-agent.ts, in this process) stay connected and idle
 * for several heartbeat intervals. The database statements the gateway runs in that window are
 * counted from PostgreSQL itself (pg_stat_database.xact_commit of the stack's database: every
 * statement of the gateway is its own transaction) and must stay within a bound that does not
 * depend on N, far below one per heartbeat. Liveness stays truthful meanwhile: every agent is
 * `online` with a recent last_heartbeat in GET /api/v1/agents. And an agent that stops
 * heartbeating (SIGSTOP) is still marked offline, and its socket closed, within the heartbeat
 * timeout (plus a sweep).
 *
 * Guarded by counts, not timings. Checked red: with AGENT_HEARTBEAT_WRITE=per-beat (one UPDATE
 * per heartbeat, the old behaviour) the count test fails with ~N statements per interval.
 */
import { Client } from 'pg';
import { FakeAgent } from '../bench/fake-agent';
import { TEST_ENV } from './harness/env';
import { sleep, Stack, waitFor } from './harness/stack';

jest.setTimeout(240_000);

const N = 200;
const TIMEOUT_MS = 3000; // AGENT_HEARTBEAT_TIMEOUT: agents beat every second
const BEAT_MS = TIMEOUT_MS / 3;
const SWEEP_MS = 2000;
const WINDOW_MS = 12_000;

describe('idle agents cost O(pods × intervals) database statements', () => {
  const stack = new Stack('heartbeat-cost', {
    AGENT_HEARTBEAT_TIMEOUT: `${TIMEOUT_MS}ms`,
    AGENT_SWEEP_INTERVAL: `${SWEEP_MS}ms`,
    AGENT_HUB_BACKEND: 'redis',
    REDIS_URL: TEST_ENV.redisUrl,
    // AGENT_HEARTBEAT_WRITE: 'per-beat', // uncomment to see the count test fail (the old behaviour)
  });
  const fakes: FakeAgent[] = [];
  const admin = new Client({ connectionString: TEST_ENV.pgAdminUrl });

  beforeAll(async () => {
    await stack.start({ worker: false });
    await admin.connect();
    const ids = Array.from({ length: N }, (_, i) => `hb-idle-${i}`);
    const tokens = new Map((await stack.agentTokensBulk(ids)).map((t, i) => [ids[i], t]));
    const url = `ws://127.0.0.1:${stack.agentPort}`;
    for (let i = 0; i < ids.length; i += 25) {
      await Promise.all(
        ids.slice(i, i + 25).map((id) => {
          const f = new FakeAgent(id, url, tokens.get(id)!);
          fakes.push(f);
          return f.connect(30_000);
        }),
      );
    }
  });

  afterAll(async () => {
    for (const f of fakes) f.close();
    await admin.end().catch(() => undefined);
    await stack.stop();
  });

  const commits = async (): Promise<number> => {
    await admin.query('SELECT pg_stat_clear_snapshot()');
    const r = await admin.query<{ n: string }>('SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = $1', [stack.dbName]);
    return Number(r.rows[0].n);
  };

  test(`${N} idle agents: statements per heartbeat interval do not grow with the agent count; every agent stays online`, async () => {
    // Registrations settled, and their statistics reported: an idle backend reports its pending
    // counts up to 10 s later (PGSTAT_IDLE_INTERVAL), which would land in the window.
    await sleep(11_000);
    const before = await commits();
    await sleep(WINDOW_MS);
    await sleep(1500); // backends report their statistics at most once a second
    const statements = (await commits()) - before;
    const intervals = (WINDOW_MS + 1500) / BEAT_MS;
    const perBeatWouldBe = N * (WINDOW_MS / BEAT_MS);
    // Per interval and pod: two batched liveness writes (one every half interval) and, every
    // sweep, three constant statements; generous headroom, still independent of N.
    const bound = Math.ceil(8 * intervals + 20);
    process.stdout.write(
      `[heartbeat-cost] ${statements} statements in ${(WINDOW_MS + 1500) / 1000} s with ${N} agents (bound ${bound}; one per heartbeat would be ~${perBeatWouldBe})\n`,
    );
    expect(statements).toBeLessThanOrEqual(bound);
    expect(statements).toBeLessThan(perBeatWouldBe / 10);

    // Truthful: every agent online, its recorded beat recent, in the API.
    const token = await stack.login();
    const r = await stack.call<{ agent_id: string; status: string; health: string; heartbeat_age_s: number; last_heartbeat: string }[]>(
      'GET',
      '/api/v1/agents',
      undefined,
      token,
    );
    expect(r.status).toBe(200);
    const ours = r.body.filter((a) => a.agent_id.startsWith('hb-idle-'));
    expect(ours).toHaveLength(N);
    const notOnline = ours.filter((a) => a.status !== 'online' || a.health !== 'online' || a.heartbeat_age_s * 1000 >= TIMEOUT_MS);
    expect(notOnline.map((a) => `${a.agent_id} ${a.status}/${a.health} ${a.heartbeat_age_s}s`)).toEqual([]);
  });

  test('a frozen (SIGSTOP) agent is still marked offline and its socket closed within the heartbeat timeout', async () => {
    const AGENT = 'hb-frozen-1';
    const proc = await stack.startFakeAgent(AGENT);
    await waitFor(
      'the agent online',
      async () => (await stack.pool.query(`SELECT status FROM agents WHERE agent_id = $1`, [AGENT])).rows[0]?.status === 'online',
      10_000,
    );
    const closed = stack.api.waitForLog(
      new RegExp(`agent missed its heartbeats; closing its socket.*${AGENT}|${AGENT}.*agent missed its heartbeats; closing its socket`),
      20_000,
    );
    proc.signal('SIGSTOP');
    const t0 = Date.now();
    try {
      await waitFor(
        'the frozen agent offline',
        async () => (await stack.pool.query(`SELECT status FROM agents WHERE agent_id = $1`, [AGENT])).rows[0]?.status === 'offline',
        20_000,
        50,
      );
      const tookMs = Date.now() - t0;
      await closed;
      // Offline within the timeout after its last beat (at most one beat before the freeze), one
      // sweep or liveness tick, and scheduling slack on a loaded machine.
      expect(tookMs).toBeLessThan(TIMEOUT_MS + SWEEP_MS + 2000);
      // The other idle agents are untouched.
      const online = await stack.pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM agents WHERE agent_id LIKE 'hb-idle-%' AND status = 'online'`);
      expect(online.rows[0].n).toBe(N);
    } finally {
      proc.signal('SIGCONT');
      await proc.kill('SIGKILL');
    }
  });
});
