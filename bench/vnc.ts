/**
 * VNC tunnel vs direct TCP to the same VNC server, in one run, reported as ratios:
 *   direct = TCP to 127.0.0.1:<io.streamspace.vnc-port> (VncAuth with the session's password, read
 *            from the container's environment through the Docker API, as the agent does)
 *   tunnel = viewer WebSocket on the gateway (fresh single-use ticket per connection) → agent
 *            stream socket → TCP to the same server.
 * Throughput: full-screen non-incremental Raw updates back to back for ~3 s.
 * Latency: 1x1 non-incremental request → update fully read, 1000 times after 50 warm-ups.
 * Direct and tunnel alternate in two rounds each so drift (CPU frequency, Xvnc state) hits both.
 */
import { createSession, fmtMs, fmtSummary, log, Metric, ms, now, pollState, Stack, Summary, summarize, withStack } from './common';
import { RfbClient } from './rfb';
import { cpuSeconds } from './procstat';

const NAME = 'vnc';
const THROUGHPUT_MS = 3000;
const ROUNDS = 2;
const LATENCY_ITER = 1000;
const LATENCY_WARMUP = 50;

type Connect = () => Promise<RfbClient>;

interface Throughput {
  mbPerSec: number;
  bytes: number;
  /** CPU seconds of each watched process during the run. */
  cpuSecs: Record<string, number>;
  /** CPU use of each watched process during the run, in % of one core. */
  cpu: Record<string, number>;
}

/**
 * Full-screen Raw updates back to back for durationMs. The tunnel adds two Node relays (gateway,
 * agent) competing for the same cores, so their CPU use is recorded alongside.
 */
async function throughput(connect: Connect, durationMs: number, pids: Record<string, number>): Promise<Throughput> {
  const c = await connect();
  try {
    const init = await c.handshake();
    // One warm-up frame (first update may be slower while the server sets up its encoder).
    c.request(0, 0, init.width, init.height);
    await c.readUpdate();
    let bytes = 0;
    const cpu0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]));
    const t0 = now();
    while (ms(t0) < durationMs) {
      c.request(0, 0, init.width, init.height);
      bytes += await c.readUpdate();
    }
    const secs = ms(t0) / 1000;
    const cpuSecs = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid) - cpu0[k]]));
    const cpu = Object.fromEntries(Object.entries(cpuSecs).map(([k, c]) => [k, (c / secs) * 100]));
    return { mbPerSec: bytes / 1e6 / secs, bytes, cpuSecs, cpu };
  } finally {
    c.close();
  }
}

const fmtCpu = (runs: Throughput[]): string =>
  Object.keys(runs[0].cpu)
    .map((k) => `${k} ${(runs.reduce((a, r) => a + r.cpu[k], 0) / runs.length).toFixed(0)}%`)
    .join(', ');

async function latency(connect: Connect, iterations: number, warmup: number): Promise<number[]> {
  const c = await connect();
  try {
    await c.handshake();
    const samples: number[] = [];
    for (let i = 0; i < warmup + iterations; i++) {
      const t0 = now();
      c.request(0, 0, 1, 1);
      await c.readUpdate();
      if (i >= warmup) samples.push(ms(t0));
    }
    return samples;
  } finally {
    c.close();
  }
}

/** A tunnel connection: each needs its own ticket. */
async function tunnelConnect(stack: Stack, token: string, sessionId: string): Promise<RfbClient> {
  const r = await stack.call<{ url: string }>('POST', `/api/v1/sessions/${sessionId}/vnc-ticket`, undefined, token);
  if (r.status !== 201) throw new Error(`vnc-ticket: ${r.status} ${JSON.stringify(r.body)}`);
  return RfbClient.websocket(`ws://127.0.0.1:${stack.apiPort}${r.body.url}`);
}

interface Setup {
  direct: Connect;
  tunnel: Connect;
  pids: Record<string, number>;
}

/** A Docker agent, a running session, and both ways to its VNC server. */
async function setup(stack: Stack): Promise<Setup> {
  const agent = await stack.startDockerAgent('bench-docker-vnc', { VNC_PORT_RANGE: '16070-16079' });
  const token = await stack.login();
  const id = await createSession(stack, token);
  await pollState(stack, token, id, 'running', 20);
  const [container] = await stack.containers(id);
  const port = Number(container?.Labels['io.streamspace.vnc-port']);
  if (!port) throw new Error(`session ${id}: no container with a vnc-port label`);

  const env = (await stack.docker.getContainer(container!.Id).inspect()).Config.Env ?? [];
  const password = env.find((e) => e.startsWith('VNC_PASSWORD='))?.slice('VNC_PASSWORD='.length) ?? null;
  const direct: Connect = () => RfbClient.tcp('127.0.0.1', port, password);
  const tunnel: Connect = () => tunnelConnect(stack, token, id);

  const probe = await direct();
  const init = await probe.handshake();
  probe.close();
  log(NAME, `server ${init.version} ${init.width}x${init.height} ${init.bitsPerPixel} bpp "${init.name}", direct port ${port}`);
  return { direct, tunnel, pids: { bench: process.pid, gateway: stack.api.child!.pid!, agent: agent.child!.pid! } };
}

const cpuPerGb = (runs: Throughput[], k: string) => runs.reduce((a, r) => a + r.cpuSecs[k], 0) / (runs.reduce((a, r) => a + r.bytes, 0) / 1e9);

/**
 * bench/relay.ts's end-to-end part: the real gateway and Docker agent processes between a viewer
 * and Xvnc, alternating with direct TCP; the tunnel's share of direct and each hop's CPU per GB.
 */
export async function realTunnel(rounds = 3, runMs = 1500): Promise<Metric[]> {
  return withStack(`bench-relay-real`, {}, async (stack) => {
    const { direct, tunnel, pids } = await setup(stack);
    const tp = { direct: [] as Throughput[], tunnel: [] as Throughput[] };
    for (let round = 0; round < rounds; round++) {
      tp.direct.push(await throughput(direct, runMs, pids));
      tp.tunnel.push(await throughput(tunnel, runMs, pids));
    }
    const mean = (xs: Throughput[]) => xs.reduce((a, b) => a + b.mbPerSec, 0) / xs.length;
    const share = mean(tp.tunnel) / mean(tp.direct);
    const g = cpuPerGb(tp.tunnel, 'gateway');
    const a = cpuPerGb(tp.tunnel, 'agent');
    log(
      'relay',
      `real tunnel: ${mean(tp.tunnel).toFixed(0)} vs direct ${mean(tp.direct).toFixed(0)} MB/s; gateway ${g.toFixed(2)}, agent ${a.toFixed(2)} CPU-s/GB`,
    );
    return [
      {
        metric: 'real tunnel (gateway + Docker agent + Xvnc) share of direct TCP',
        ours: `${(share * 100).toFixed(1)}% (${mean(tp.tunnel).toFixed(0)} vs ${mean(tp.direct).toFixed(0)} MB/s)`,
        target: '≥ 50% of direct loopback TCP',
        peer: 'issue 14 before: 21%',
      },
      {
        metric: 'real tunnel CPU per GB',
        ours: `gateway ${g.toFixed(2)}, agent ${a.toFixed(2)} CPU-s/GB`,
        target: '',
        peer: 'issue 14 before: 0.97 CPU-s per 192 MB (5.1 CPU-s/GB) both',
      },
    ];
  });
}

export async function vncBench(): Promise<Metric[]> {
  return withStack(`bench-${NAME}`, {}, async (stack) => {
    const { direct, tunnel, pids } = await setup(stack);
    const tp = { direct: [] as Throughput[], tunnel: [] as Throughput[] };
    const lat = { direct: [] as number[], tunnel: [] as number[] };
    // Names the step that failed (which path, which measurement, which round).
    const step = async <T>(what: string, fn: () => Promise<T>): Promise<T> => {
      try {
        return await fn();
      } catch (err) {
        throw new Error(`${what}: ${(err as Error).message}`);
      }
    };
    for (let round = 1; round <= ROUNDS; round++) {
      tp.direct.push(await step(`direct throughput, round ${round}`, () => throughput(direct, THROUGHPUT_MS / ROUNDS, pids)));
      tp.tunnel.push(await step(`tunnel throughput, round ${round}`, () => throughput(tunnel, THROUGHPUT_MS / ROUNDS, pids)));
      lat.direct.push(...(await step(`direct latency, round ${round}`, () => latency(direct, LATENCY_ITER / ROUNDS, LATENCY_WARMUP))));
      lat.tunnel.push(...(await step(`tunnel latency, round ${round}`, () => latency(tunnel, LATENCY_ITER / ROUNDS, LATENCY_WARMUP))));
    }
    const mean = (xs: Throughput[]) => xs.reduce((a, b) => a + b.mbPerSec, 0) / xs.length;
    const tDirect = mean(tp.direct);
    const tTunnel = mean(tp.tunnel);
    const ratio = tTunnel / tDirect;
    const ld: Summary = summarize(lat.direct);
    const lt: Summary = summarize(lat.tunnel);
    const added = lt.p50 - ld.p50;
    const each = (runs: Throughput[]) => runs.map((r) => r.mbPerSec.toFixed(0)).join(', ');
    log(NAME, `throughput direct ${tDirect.toFixed(0)} MB/s (runs ${each(tp.direct)}; cpu ${fmtCpu(tp.direct)})`);
    log(NAME, `throughput tunnel ${tTunnel.toFixed(0)} MB/s (runs ${each(tp.tunnel)}; cpu ${fmtCpu(tp.tunnel)}) → ${(ratio * 100).toFixed(1)}% of direct`);
    log(NAME, `tunnel CPU per GB: gateway ${cpuPerGb(tp.tunnel, 'gateway').toFixed(2)}, agent ${cpuPerGb(tp.tunnel, 'agent').toFixed(2)} CPU-s`);
    log(NAME, `1x1 update round trip, direct: ${fmtSummary(ld)}`);
    log(NAME, `1x1 update round trip, tunnel: ${fmtSummary(lt)}`);
    log(NAME, `added latency: p50 ${fmtMs(added)}, p95 ${fmtMs(lt.p95 - ld.p95)}`);

    return [
      {
        metric: 'VNC proxy added latency (p50 per round trip)',
        ours: `${fmtMs(added)} (tunnel ${fmtMs(lt.p50)} vs direct ${fmtMs(ld.p50)}; p95 +${fmtMs(lt.p95 - ld.p95)})`,
        target: '< 1 ms p50 over direct TCP',
        peer: '< 100 ms (spec)',
      },
      {
        metric: 'VNC tunnel throughput',
        ours: `${(ratio * 100).toFixed(1)}% of direct (${tTunnel.toFixed(0)} vs ${tDirect.toFixed(0)} MB/s)`,
        target: '≥ 50% of direct loopback TCP',
        peer: 'none published by peers',
      },
    ];
  });
}
