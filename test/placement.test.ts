/**
 * Placement in a fleet larger than PLACEMENT_FULL_SCAN (issue 14): a few random agents are locked
 * and counted per placement instead of every agent and every session. Capacity is still exact:
 * 12 protocol-faithful fake agents (bench/fake-agent.ts, in this process) of 2 sessions each take
 * 24 sessions created at once, every agent ends with exactly 2 (none over, so the sample's count
 * is right under concurrency), and a 25th is refused naming all 12 agents full (the fallback
 * scan ran once the sample had no room).
 *
 * Checked red: without the capacity filter on the sampled agents, agents are overfilled.
 */
import { FakeAgent } from '../bench/fake-agent';
import { Stack, waitFor } from './harness/stack';

jest.setTimeout(240_000);

const AGENTS = 12;
const PER_AGENT = 2;

describe('placement on a large fleet', () => {
  const stack = new Stack('placement', { PLACEMENT_WHEN_FULL: 'fail' });
  const fakes: FakeAgent[] = [];
  let admin: string;

  beforeAll(async () => {
    await stack.start();
    admin = await stack.login();
    const ids = Array.from({ length: AGENTS }, (_, i) => `place-${i}`);
    const tokens = await stack.agentTokensBulk(ids);
    for (const [i, id] of ids.entries()) fakes.push(new FakeAgent(id, `ws://127.0.0.1:${stack.agentPort}`, tokens[i], PER_AGENT));
    await Promise.all(fakes.map((f) => f.connect(30_000)));
  });

  afterAll(async () => {
    for (const f of fakes) f.close();
    await stack.stop();
  });

  test(`${AGENTS * PER_AGENT} concurrent creates fill ${AGENTS} agents of ${PER_AGENT} exactly; one more is refused`, async () => {
    const created = await Promise.all(
      Array.from({ length: AGENTS * PER_AGENT }, () =>
        stack.call<{ id: string }>('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin),
      ),
    );
    expect(created.map((r) => r.status)).toEqual(created.map(() => 201));
    await waitFor(
      'all running',
      async () => {
        const r = await stack.pool.query<{ n: string }>(`SELECT count(*) AS n FROM sessions WHERE state = 'running'`);
        return Number(r.rows[0].n) === AGENTS * PER_AGENT;
      },
      120_000,
      200,
    );
    const per = await stack.pool.query<{ agent_id: string; n: string }>(
      `SELECT a.agent_id, count(s.id) AS n FROM agents a LEFT JOIN sessions s ON s.agent_id = a.id AND s.state = 'running' GROUP BY 1 ORDER BY 1`,
    );
    expect(Object.fromEntries(per.rows.map((r) => [r.agent_id, Number(r.n)]))).toEqual(Object.fromEntries(fakes.map((f) => [f.agentId, PER_AGENT])));
    for (const f of fakes) expect(f.duplicates()).toEqual([]);

    const extra = await stack.call<{ id: string }>('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, admin);
    expect(extra.status).toBe(201);
    const failed = await stack.waitForState(admin, extra.body.id, 'failed', 60_000);
    expect(failed.error).toMatch(new RegExp(`all ${AGENTS} online docker agent\\(s\\) are full`));
  });
});
