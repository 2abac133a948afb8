/**
 * Idle agents (issue 14, part 4): with 100 and then 1,000 protocol-faithful fake agents connected
 * to one gateway and doing nothing but heartbeat, what does the control plane spend? Measured over
 * a window per size: gateway CPU (/proc/<pid>/stat utime+stime), database statements per second
 * (pg_stat_database.xact_commit of the stack's own database: every gateway statement is its own
 * transaction) and Redis commands per second (INFO stats total_commands_processed of a private
 * redis-server started for the run, so other users of the shared one do not count).
 *
 * The baseline is the old behaviour in the same run: a second stack with
 * AGENT_HEARTBEAT_WRITE=per-beat (one UPDATE per heartbeat, one Redis command per agent per
 * location refresh). AGENT_HEARTBEAT_TIMEOUT is the default 30 s (agents beat every 10 s);
 * BENCH_IDLE_WINDOW (s, default 30) sets the window.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import Redis from 'ioredis';
import { Client } from 'pg';
import { hashAgentToken } from '../api/auth/agent-credentials';
import { TEST_ENV } from '../test/harness/env';
import { freePort } from '../test/harness/stack';
import { log, Metric, ms, now, sleep, Stack, withStack } from './common';
import { FakeAgent } from './fake-agent';
import { cpuSeconds } from './procstat';

const NAME = 'idle-agents';
const SIZES = [100, 1000];
const WINDOW_MS = Number(process.env.BENCH_IDLE_WINDOW ?? 30) * 1000;
/** An idle backend reports its statistics up to 10 s late (PGSTAT_IDLE_INTERVAL): settle first. */
const SETTLE_MS = 11_000;

interface Sample {
  agents: number;
  cpuPct: number;
  dbPerSec: number;
  redisPerSec: number;
  /** EVAL calls: the round trips of location refreshes (commands run inside them count in redisPerSec). */
  redisEvalsPerSec: number;
  agentRowUpdatesPerSec: number;
}

async function startRedis(): Promise<{ url: string; proc: ChildProcess | null }> {
  const port = await freePort();
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const failed = await new Promise<boolean>((resolve) => {
    proc.once('error', () => resolve(true));
    setTimeout(() => resolve(false), 300);
  });
  if (failed) {
    log(NAME, 'redis-server not found: using the shared Redis (its command count includes other users)');
    return { url: TEST_ENV.redisUrl, proc: null };
  }
  const probe = new Redis(`redis://127.0.0.1:${port}`, { lazyConnect: true, maxRetriesPerRequest: 1 });
  for (let i = 0; ; i++) {
    try {
      await probe.connect();
      await probe.ping();
      break;
    } catch (err) {
      if (i > 50) throw err;
      await sleep(100);
    }
  }
  probe.disconnect();
  return { url: `redis://127.0.0.1:${port}`, proc };
}

/** One token per agent, recorded in one statement. */
async function mintTokens(stack: Stack, ids: string[]): Promise<Map<string, string>> {
  const rows = ids.map((agentId) => {
    const id = randomUUID();
    const token = stack.tokens.signAgent(agentId, { tokenId: id });
    return { id, agentId, token, hash: hashAgentToken(token) };
  });
  await stack.pool.query(
    `INSERT INTO agent_tokens (id, agent_id, token_hash, description, created_by)
     SELECT t.id, t.agent_id, t.hash, 'idle-agents bench', 'bench' FROM unnest($1::uuid[], $2::text[], $3::text[]) AS t(id, agent_id, hash)`,
    [rows.map((r) => r.id), rows.map((r) => r.agentId), rows.map((r) => r.hash)],
  );
  return new Map(rows.map((r) => [r.agentId, r.token]));
}

async function measureMode(mode: 'batched' | 'per-beat', redisUrl: string): Promise<Sample[]> {
  const env: NodeJS.ProcessEnv = { AGENT_HUB_BACKEND: 'redis', REDIS_URL: redisUrl };
  if (mode === 'per-beat') env.AGENT_HEARTBEAT_WRITE = 'per-beat';
  return withStack(`${NAME}-${mode}`, env, async (stack) => {
    const admin = new Client({ connectionString: TEST_ENV.pgAdminUrl });
    await admin.connect();
    const redis = new Redis(redisUrl, { maxRetriesPerRequest: 2 });
    const fakes: FakeAgent[] = [];
    const samples: Sample[] = [];
    try {
      const pid = stack.api.child!.pid!;
      const url = `ws://127.0.0.1:${stack.agentPort}`;
      const statsOf = async () => {
        await admin.query('SELECT pg_stat_clear_snapshot()');
        const db = await admin.query<{ n: string }>('SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = $1', [stack.dbName]);
        const upd = await stack.pool.query<{ n: string }>(`SELECT n_tup_upd::text AS n FROM pg_stat_user_tables WHERE relname = 'agents'`);
        const info = await redis.info('all');
        const cmds = Number(/total_commands_processed:(\d+)/.exec(info)?.[1] ?? NaN);
        const evals = [...info.matchAll(/cmdstat_eval(?:sha)?:calls=(\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
        return { xacts: Number(db.rows[0].n), rowUpdates: Number(upd.rows[0].n), redis: cmds, evals, cpu: cpuSeconds(pid), t: now() };
      };
      for (const size of SIZES) {
        const ids = Array.from({ length: size - fakes.length }, (_, i) => `idle-${mode}-${fakes.length + i}`);
        const tokens = await mintTokens(stack, ids);
        const t0 = now();
        for (let i = 0; i < ids.length; i += 50) {
          await Promise.all(
            ids.slice(i, i + 50).map((id) => {
              const f = new FakeAgent(id, url, tokens.get(id)!);
              fakes.push(f);
              return f.connect(60_000);
            }),
          );
        }
        log(
          NAME,
          `${mode}: ${fakes.length} agents connected in ${(ms(t0) / 1000).toFixed(1)} s; settling ${SETTLE_MS / 1000} s, measuring ${WINDOW_MS / 1000} s`,
        );
        await sleep(SETTLE_MS);
        const a = await statsOf();
        await sleep(WINDOW_MS);
        const b = await statsOf();
        const secs = ms(a.t, b.t) / 1000;
        // The two statsOf statements on the stack's database are not the gateway's.
        const s: Sample = {
          agents: fakes.length,
          cpuPct: ((b.cpu - a.cpu) / secs) * 100,
          dbPerSec: (b.xacts - a.xacts - 1) / secs,
          redisPerSec: (b.redis - a.redis - 1) / secs,
          redisEvalsPerSec: (b.evals - a.evals) / secs,
          agentRowUpdatesPerSec: (b.rowUpdates - a.rowUpdates) / secs,
        };
        samples.push(s);
        log(
          NAME,
          `${mode} ${s.agents} agents: gateway CPU ${s.cpuPct.toFixed(2)} %, ${s.dbPerSec.toFixed(2)} db statements/s, ${s.redisPerSec.toFixed(2)} Redis commands/s (${s.redisEvalsPerSec.toFixed(2)} EVAL round trips/s), ${s.agentRowUpdatesPerSec.toFixed(1)} agents rows updated/s`,
        );
      }
    } finally {
      for (const f of fakes) f.close();
      redis.disconnect();
      await admin.end().catch(() => undefined);
    }
    return samples;
  });
}

export async function idleAgentsBench(): Promise<Metric[]> {
  const { url, proc } = await startRedis();
  try {
    const ours = await measureMode('batched', url);
    const base = await measureMode('per-beat', url);
    const rows: Metric[] = [];
    const fmt = (v: number, d = 2) => (Number.isFinite(v) ? v.toFixed(d) : 'n/a');
    const growth = (xs: Sample[], k: keyof Sample) => (xs[0][k] > 0 ? `×${fmt(xs[xs.length - 1][k] / xs[0][k], 1)}` : '');
    const add = (label: string, k: keyof Sample, unit: string, target: string) => {
      for (let i = 0; i < ours.length; i++)
        rows.push({
          metric: `idle agents ${ours[i].agents.toLocaleString('en-US')}: ${label}`,
          ours: `${fmt(ours[i][k])} ${unit}`,
          target: i === ours.length - 1 ? `${target} (ours ${growth(ours, k)} from ${ours[0].agents}, baseline ${growth(base, k)})` : target,
          peer: `baseline (one UPDATE per beat): ${fmt(base[i][k])} ${unit}`,
        });
    };
    add('gateway CPU', 'cpuPct', '%', 'flat');
    add('database statements/s', 'dbPerSec', '/s', 'flat, O(pods)');
    add('Redis commands/s (incl. inside scripts)', 'redisPerSec', '/s', 'one per agent per refresh');
    add('Redis round trips (EVAL)/s', 'redisEvalsPerSec', '/s', 'flat, O(pods)');
    add('agents rows updated/s', 'agentRowUpdatesPerSec', '/s', 'one per agent per beat interval');
    return rows;
  } finally {
    proc?.kill('SIGTERM');
  }
}
