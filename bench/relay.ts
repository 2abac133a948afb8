/**
 * "Relay near the wire" (issue 14): what each WebSocket hop of the VNC tunnel costs, next to the
 * floor for such a hop in Node (a bare `ws` relay), measured in one run with the variants
 * alternating, and 500 viewers at 2 Mbit/s each through one gateway process.
 *
 * Every relay runs in its own process (this file, forked with `child <role>`), so its CPU time is
 * read from /proc/<pid>/stat alone; the source (a TCP server streaming bytes, standing in for a
 * VNC server) and the viewers live in this process, whose CPU is not counted.
 *
 *   direct       viewer ── TCP ──────────────────────────────────────────── source
 *   bare-tcp     viewer ── ws ── [bare ws server ⇄ TCP] ── TCP ─────────── source
 *   agent        sink(ws server) ── ws ── [agent hop: relayTcpWebSocket] ── TCP ── source
 *   bare-ws      viewer ── ws ── [bare ws ⇄ ws] ── ws ── agent hop ── TCP ── source
 *   gateway      viewer ── ws ── [gateway hop: relayTunnel] ── ws ── agent hop ── TCP ── source
 *   real tunnel  the real gateway and Docker agent processes, Xvnc in a session container (needs
 *                Docker; bench/vnc.ts's measurement): the tunnel's share of direct TCP.
 *
 * CPU-seconds per GB delivered to the viewer, per hop; the agent hop is compared with bare-tcp
 * (both turn TCP reads into WebSocket frames), the gateway hop with bare-ws (both move frames
 * from one WebSocket to another).
 *
 * 500 viewers: one "agents" process opens 500 stream sockets (the agent's socket options) to one
 * gateway-hop process and sends each a timestamped chunk every 40 ms at 2 Mbit/s; 500 viewers here
 * read them. Added latency = (tunnel − direct) one-way delay percentiles, direct being the same
 * 500 streams straight over TCP. A viewer is starved below 80 % of its rate or with a gap > 1 s.
 */
import { ChildProcess, fork } from 'node:child_process';
import type { IncomingMessage } from 'node:http';
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import WebSocket, { WebSocketServer } from 'ws';
import { streamSocketOptions } from '../agents/common/tunnel';
import { relayTunnel } from '../api/vnc/tunnel';
import { relayTcpWebSocket } from '../protocol/relay';
import { GATEWAY_NODE_FLAGS } from '../test/harness/stack';
import { log, Metric, ms, now, sleep } from './common';
import { cpuSeconds } from './procstat';

const NAME = 'relay';
const RUN_MS = Number(process.env.RELAY_RUN_MS ?? 2000);
const ROUNDS = Number(process.env.RELAY_ROUNDS ?? 5);
const VIEWERS = Number(process.env.RELAY_VIEWERS ?? 500);
const RATE_BPS = 2_000_000 / 8;
const TICK_MS = 40;
const FLEET_WARMUP_MS = 3000;
const FLEET_MS = Number(process.env.RELAY_FLEET_MS ?? 8000);
const HIGH_WATER = 1 << 20;

// ------------------------------------------------------------------ child processes (relays)

type ChildMsg = { op: 'ready'; port?: number } | { op: 'opened'; id: string } | { op: 'fleet-ready' } | { op: 'eld'; p99: number; max: number };
type ParentMsg =
  | { op: 'open'; id: string; source: number; url: string }
  | { op: 'fleet'; n: number; url?: string; tcpPort?: number; stop?: boolean }
  | { op: 'eld'; reset?: boolean };

const send = (m: ChildMsg) => process.send!(m);

/** ws server pairing /v/<id> (viewer) with /a/<id> (stream); join() relays each pair. */
function pairingServer(join: (viewer: WebSocket, stream: WebSocket) => void): void {
  const waiting = new Map<string, { side: 'v' | 'a'; ws: WebSocket }>();
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 64 << 20 });
  wss.on('connection', (ws: WebSocket, req: IncomingMessage) => {
    const m = /^\/([va])\/(.+)$/.exec(req.url ?? '');
    if (!m) return ws.close(1008, 'bad path');
    const side = m[1] as 'v' | 'a';
    const other = waiting.get(m[2]);
    if (!other) {
      waiting.set(m[2], { side, ws });
      return;
    }
    waiting.delete(m[2]);
    if (side === 'v') join(ws, other.ws);
    else join(other.ws, ws);
  });
  wss.on('listening', () => send({ op: 'ready', port: (wss.address() as net.AddressInfo).port }));
}

type Paused = { pause(): void; resume(): void };
/** The bare relay's whole backpressure: pause the source while the target's socket is over 1 MB. */
function bareForward(source: Paused, target: WebSocket): (d: Buffer) => void {
  let paused = false;
  return (d) => {
    target.send(d);
    if (!paused && target.bufferedAmount > HIGH_WATER) {
      paused = true;
      source.pause();
      (target as unknown as { _socket: net.Socket })._socket.once('drain', () => {
        paused = false;
        source.resume();
      });
    }
  };
}

function bareClose(a: WebSocket | net.Socket, b: WebSocket | net.Socket) {
  const end = () => (a instanceof WebSocket ? a.terminate() : a.destroy());
  b.on('close', end);
  b.on('error', end);
}

const roles: Record<string, () => void> = {
  /** Bare ws server ⇄ TCP: the floor for a hop that turns TCP reads into WebSocket frames. */
  'bare-tcp'() {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false });
    wss.on('connection', (ws: WebSocket, req: IncomingMessage) => {
      const tcp = net.connect(Number(new URL(req.url ?? '/', 'http://x').searchParams.get('port')), '127.0.0.1');
      tcp.on('data', bareForward(tcp, ws));
      ws.on('message', (d: Buffer) => tcp.write(d));
      bareClose(tcp, ws);
      bareClose(ws, tcp);
    });
    wss.on('listening', () => send({ op: 'ready', port: (wss.address() as net.AddressInfo).port }));
  },
  /** Bare ws ⇄ ws: the floor for a hop that moves frames from one WebSocket to another. */
  'bare-ws'() {
    pairingServer((v, a) => {
      v.on('message', bareForward(v, a) as (d: WebSocket.RawData) => void);
      a.on('message', bareForward(a, v) as (d: WebSocket.RawData) => void);
      bareClose(v, a);
      bareClose(a, v);
    });
  },
  /** Our gateway hop: the same code the gateway runs per tunnel (api/vnc/tunnel.ts relayTunnel). */
  gateway() {
    let inputs = 0;
    pairingServer((v, a) => {
      relayTunnel(v, a, { idleTimeoutMs: 300_000, bytes: { toSession: 0, toViewer: 0 }, onInput: () => inputs++ });
    });
  },
  /** Our agent hop: the agent's stream socket options and relay (agents/common/tunnel.ts). */
  agent() {
    process.on('message', (m: ParentMsg) => {
      if (m.op !== 'open') return;
      const ws = new WebSocket(m.url, streamSocketOptions('bench'));
      ws.once('open', () => {
        const tcp = net.connect({ port: m.source, host: '127.0.0.1', noDelay: true });
        tcp.once('connect', () => {
          relayTcpWebSocket(tcp, ws);
          send({ op: 'opened', id: m.id });
        });
      });
      ws.on('error', () => undefined);
    });
    send({ op: 'ready' });
  },
  /** The 500 streams: timestamped chunks at RATE_BPS each, over TCP (direct) or as agent stream sockets. */
  fleet() {
    let sockets: { write(b: Buffer): void; close(): void }[] = [];
    let timer: NodeJS.Timeout | null = null;
    process.on('message', async (m: ParentMsg) => {
      if (m.op !== 'fleet') return;
      if (timer) clearInterval(timer);
      for (const s of sockets) s.close();
      sockets = [];
      if (m.stop) return send({ op: 'fleet-ready' });
      const opened = await Promise.all(
        Array.from({ length: m.n }, (_, i) => {
          if (m.tcpPort)
            return new Promise<(typeof sockets)[number]>((resolve) => {
              const s = net.connect({ port: m.tcpPort!, host: '127.0.0.1', noDelay: true }, () => {
                s.write(`${String(i).padStart(8, '0')}`);
                resolve({ write: (b) => s.write(b), close: () => s.destroy() });
              });
              s.on('error', () => undefined);
            });
          return new Promise<(typeof sockets)[number]>((resolve, reject) => {
            const ws = new WebSocket(`${m.url}/a/${i}`, streamSocketOptions('bench'));
            ws.once('open', () => resolve({ write: (b) => ws.send(b), close: () => ws.terminate() }));
            ws.on('message', () => undefined);
            ws.once('error', reject);
          });
        }),
      );
      sockets = opened;
      const start = now();
      const sent = new Array<number>(m.n).fill(0);
      let seq = 0;
      // One timer; each stream's chunks fall in its own slot of the 40 ms period (staggered),
      // sized so that each stream has sent exactly RATE_BPS × elapsed.
      let slot = 0;
      const slots = 8;
      timer = setInterval(() => {
        const t = now();
        const elapsed = Number(t - start) / 1e9;
        for (let i = slot; i < sockets.length; i += slots) {
          const owed = Math.floor(RATE_BPS * elapsed) - sent[i];
          if (owed < 16) continue;
          const b = Buffer.allocUnsafe(owed);
          b.writeUInt32BE(owed, 0);
          b.writeBigUInt64BE(now(), 4);
          b.writeUInt32BE(seq++, 12);
          sockets[i].write(b);
          sent[i] += owed;
        }
        slot = (slot + 1) % slots;
      }, TICK_MS / slots);
      send({ op: 'fleet-ready' });
    });
    send({ op: 'ready' });
  },
};

// ------------------------------------------------------------------ parent side

class Child {
  readonly proc: ChildProcess;
  port = 0;
  private waiters: ((m: ChildMsg) => boolean)[] = [];
  constructor(readonly role: string) {
    this.proc = fork(__filename, ['child', role], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      // Our gateway hop runs with the gateway's own V8 flags; the bare relays with Node's defaults.
      execArgv: [...(role === 'gateway' ? GATEWAY_NODE_FLAGS : []), ...(process.env.RELAY_CHILD_ARGS?.split(' ').filter(Boolean) ?? [])],
    });
    this.proc.on('message', (m: ChildMsg) => {
      this.waiters = this.waiters.filter((w) => !w(m));
    });
  }
  get pid(): number {
    return this.proc.pid!;
  }
  wait<T extends ChildMsg['op']>(
    op: T,
    pred: (m: Extract<ChildMsg, { op: T }>) => boolean = () => true,
    timeoutMs = 30_000,
  ): Promise<Extract<ChildMsg, { op: T }>> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`${this.role}: no ${op} within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push((m) => {
        if (m.op !== op || !pred(m as Extract<ChildMsg, { op: T }>)) return false;
        clearTimeout(t);
        resolve(m as Extract<ChildMsg, { op: T }>);
        return true;
      });
    });
  }
  async start(): Promise<this> {
    this.port = (await this.wait('ready')).port ?? 0;
    return this;
  }
  post(m: ParentMsg): void {
    this.proc.send(m);
  }
  stop(): void {
    this.proc.kill();
  }
}

/** The bulk source: every connection gets 256 KB buffers as fast as it reads them. */
function bulkSource(): Promise<net.Server> {
  const block = Buffer.alloc(256 << 10, 0x5a);
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    const pump = () => {
      while (!s.destroyed && s.write(block));
    };
    s.on('drain', pump);
    pump();
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

interface Run {
  bytes: number;
  secs: number;
  cpu: number;
}

/** Reads from a viewer for RUN_MS and returns the bytes, wall time and CPU of `pid`. */
async function measure(pid: number, connect: (onBytes: (n: number) => void) => Promise<() => void>): Promise<Run> {
  let bytes = 0;
  let counting = false;
  const close = await connect((n) => {
    if (counting) bytes += n;
  });
  await sleep(300); // warm-up: the pipe fills, the JIT settles
  counting = true;
  const c0 = cpuSeconds(pid);
  const t0 = now();
  await sleep(RUN_MS);
  counting = false;
  const secs = ms(t0) / 1000;
  const cpu = cpuSeconds(pid) - c0;
  close();
  await sleep(200);
  return { bytes, secs, cpu };
}

const wsViewer =
  (url: string) =>
  (onBytes: (n: number) => void): Promise<() => void> =>
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 << 20 });
      ws.on('message', (d: Buffer) => onBytes(d.length));
      ws.once('open', () => {
        // What a viewer sends first (the RFB version, security None, ClientInit), then a pointer event.
        ws.send(Buffer.concat([Buffer.from('RFB 003.008\n'), Buffer.from([1, 1]), Buffer.from([5, 0, 0, 1, 0, 1])]));
        resolve(() => ws.terminate());
      });
      ws.once('error', reject);
    });

const cpuPerGb = (runs: Run[]) => runs.reduce((a, r) => a + r.cpu, 0) / (runs.reduce((a, r) => a + r.bytes, 0) / 1e9);
const mbps = (runs: Run[]) => runs.reduce((a, r) => a + r.bytes, 0) / 1e6 / runs.reduce((a, r) => a + r.secs, 0);

async function bulk(): Promise<Metric[]> {
  const source = await bulkSource();
  const srcPort = (source.address() as net.AddressInfo).port;
  const [bareTcp, bareWs, gateway, agent] = await Promise.all(['bare-tcp', 'bare-ws', 'gateway', 'agent'].map((r) => new Child(r).start()));
  // The agent-alone sink: a ws server taking the agent's stream socket, reading it.
  const sinkServer = new WebSocketServer({ port: 0, host: '127.0.0.1', perMessageDeflate: false, maxPayload: 64 << 20 });
  await new Promise((r) => sinkServer.once('listening', r));
  const sinkPort = (sinkServer.address() as net.AddressInfo).port;
  const sinks = new Map<string, (n: number) => void>();
  sinkServer.on('connection', (ws, req) => {
    const cb = sinks.get(req.url!.slice(1));
    ws.on('message', (d: Buffer) => cb?.(d.length));
  });
  let seq = 0;
  const openAgent = async (url: string) => {
    const id = String(++seq);
    const opened = agent.wait('opened', (m) => m.id === id);
    agent.post({ op: 'open', id, source: srcPort, url });
    await opened;
  };
  const variants: Record<string, { pid: number; connect: (onBytes: (n: number) => void) => Promise<() => void> }> = {
    direct: {
      pid: process.pid,
      connect: (onBytes) =>
        new Promise((resolve) => {
          const s = net.connect(srcPort, '127.0.0.1', () => resolve(() => s.destroy()));
          s.on('data', (d) => onBytes(d.length));
          s.on('error', () => undefined);
        }),
    },
    'bare-tcp': { pid: bareTcp.pid, connect: wsViewer(`ws://127.0.0.1:${bareTcp.port}/?port=${srcPort}`) },
    agent: {
      pid: agent.pid,
      connect: async (onBytes) => {
        const id = `s${seq + 1}`;
        sinks.set(id, onBytes);
        await openAgent(`ws://127.0.0.1:${sinkPort}/${id}`);
        return () => {
          sinks.delete(id);
          for (const c of sinkServer.clients) c.terminate();
        };
      },
    },
    'bare-ws': {
      pid: bareWs.pid,
      connect: async (onBytes) => {
        const id = `b${++seq}`;
        const close = await wsViewer(`ws://127.0.0.1:${bareWs.port}/v/${id}`)(onBytes);
        await openAgent(`ws://127.0.0.1:${bareWs.port}/a/${id}`);
        return close;
      },
    },
    gateway: {
      pid: gateway.pid,
      connect: async (onBytes) => {
        const id = `g${++seq}`;
        const close = await wsViewer(`ws://127.0.0.1:${gateway.port}/v/${id}`)(onBytes);
        await openAgent(`ws://127.0.0.1:${gateway.port}/a/${id}`);
        return close;
      },
    },
  };
  const runs: Record<string, Run[]> = Object.fromEntries(Object.keys(variants).map((k) => [k, []]));
  const agentInGateway: Run[] = [];
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const order = Object.keys(variants);
      if (round % 2) order.reverse();
      for (const k of order) {
        const v = variants[k];
        const a0 = cpuSeconds(agent.pid);
        const r = await measure(v.pid, v.connect);
        if (k === 'gateway' || k === 'bare-ws') agentInGateway.push({ ...r, cpu: cpuSeconds(agent.pid) - a0 });
        runs[k].push(r);
        log(
          NAME,
          `round ${round + 1} ${k.padEnd(8)} ${(r.bytes / 1e6 / r.secs).toFixed(0).padStart(5)} MB/s  relay ${(r.cpu / (r.bytes / 1e9)).toFixed(2)} CPU-s/GB`,
        );
      }
    }
  } finally {
    for (const c of [bareTcp, bareWs, gateway, agent]) c.stop();
    sinkServer.close();
    source.close();
  }
  const g = { bare: cpuPerGb(runs['bare-ws']), ours: cpuPerGb(runs.gateway) };
  const a = { bare: cpuPerGb(runs['bare-tcp']), ours: cpuPerGb(runs.agent) };
  const d = mbps(runs.direct);
  for (const k of Object.keys(runs))
    log(
      NAME,
      `${k}: ${mbps(runs[k]).toFixed(0)} MB/s (${((mbps(runs[k]) / d) * 100).toFixed(0)}% of direct), ${k === 'direct' ? '' : `${cpuPerGb(runs[k]).toFixed(2)} CPU-s/GB`}`,
    );
  return [
    {
      metric: 'gateway hop CPU per GB (ws ⇄ ws)',
      ours: `${g.ours.toFixed(2)} CPU-s/GB = ${(g.ours / g.bare).toFixed(2)}× bare`,
      target: '≤ 1.2× bare ws relay',
      peer: `bare ws ⇄ ws relay ${g.bare.toFixed(2)} CPU-s/GB`,
    },
    {
      metric: 'agent hop CPU per GB (TCP ⇄ ws)',
      ours: `${a.ours.toFixed(2)} CPU-s/GB = ${(a.ours / a.bare).toFixed(2)}× bare`,
      target: '≤ 1.2× bare ws relay',
      peer: `bare ws ⇄ TCP relay ${a.bare.toFixed(2)} CPU-s/GB`,
    },
    {
      metric: 'synthetic tunnel throughput (gateway + agent hops)',
      ours: `${mbps(runs.gateway).toFixed(0)} MB/s = ${((mbps(runs.gateway) / d) * 100).toFixed(0)}% of direct TCP (${d.toFixed(0)} MB/s)`,
      target: '',
      peer: `bare ws ⇄ ws + agent: ${mbps(runs['bare-ws']).toFixed(0)} MB/s; one bare hop: ${mbps(runs['bare-tcp']).toFixed(0)} MB/s`,
    },
  ];
}

/** Per-viewer stream parser: [u32 length][u64 sent hrtime][u32 seq][payload]. */
class ChunkReader {
  private head = Buffer.alloc(12);
  private headLen = 0;
  private remaining = 0;
  bytes = 0;
  lastAt = 0;
  maxGapMs = 0;
  constructor(
    private readonly onChunk: (latencyMs: number) => void,
    private readonly counting: () => boolean,
  ) {}
  push(d: Buffer, at: bigint): void {
    if (this.counting()) this.bytes += d.length;
    let i = 0;
    while (i < d.length) {
      if (this.remaining > 0) {
        const n = Math.min(this.remaining, d.length - i);
        this.remaining -= n;
        i += n;
        if (this.remaining === 0) this.done(at);
        continue;
      }
      const n = Math.min(12 - this.headLen, d.length - i);
      d.copy(this.head, this.headLen, i, i + n);
      this.headLen += n;
      i += n;
      if (this.headLen === 12) {
        this.headLen = 0;
        this.sent = this.head.readBigUInt64BE(4);
        this.remaining = this.head.readUInt32BE(0) - 12;
        if (this.remaining === 0) this.done(at);
      }
    }
  }
  private sent = 0n;
  private done(at: bigint) {
    const t = Number(at / 1_000_000n);
    if (this.counting()) {
      this.onChunk(Number(at - this.sent) / 1e6);
      if (this.lastAt) this.maxGapMs = Math.max(this.maxGapMs, t - this.lastAt);
    }
    this.lastAt = t;
  }
}

interface FleetResult {
  lat: number[];
  rates: number[];
  maxGaps: number[];
  cpu: number;
}

type FleetMode = 'direct' | 'tunnel' | 'bare';

async function fleetRun(fleet: Child, mode: FleetMode, gateway: Child): Promise<FleetResult> {
  let counting = false;
  const lat: number[] = [];
  const readers: ChunkReader[] = [];
  const newReader = () => {
    const r = new ChunkReader(
      (l) => lat.push(l),
      () => counting,
    );
    readers.push(r);
    return r;
  };
  const closers: (() => void)[] = [];
  let server: net.Server | null = null;
  if (mode === 'direct') {
    server = net.createServer((s) => {
      s.setNoDelay(true);
      const r = newReader();
      let id = 8;
      s.on('data', (d) => {
        // The first 8 bytes name the stream.
        if (id > 0) {
          const skip = Math.min(id, d.length);
          id -= skip;
          d = d.subarray(skip);
        }
        r.push(d, now());
      });
      s.on('error', () => undefined);
      closers.push(() => s.destroy());
    });
    await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
    const ready = fleet.wait('fleet-ready');
    fleet.post({ op: 'fleet', n: VIEWERS, tcpPort: (server.address() as net.AddressInfo).port });
    await ready;
  } else {
    await Promise.all(
      Array.from(
        { length: VIEWERS },
        (_, i) =>
          new Promise<void>((resolve, reject) => {
            const ws = new WebSocket(`ws://127.0.0.1:${gateway.port}/v/${i}`, { perMessageDeflate: false });
            const r = newReader();
            ws.on('message', (d: Buffer) => r.push(d, now()));
            ws.once('open', () => {
              ws.send(Buffer.concat([Buffer.from('RFB 003.008\n'), Buffer.from([1, 1])]));
              // A pointer event a second (the gateway scans for input).
              const t = setInterval(() => ws.send(Buffer.from([5, 0, 0, 1, 0, 1])), 1000);
              closers.push(() => {
                clearInterval(t);
                ws.terminate();
              });
              resolve();
            });
            ws.once('error', reject);
          }),
      ),
    );
    const ready = fleet.wait('fleet-ready');
    fleet.post({ op: 'fleet', n: VIEWERS, url: `ws://127.0.0.1:${gateway.port}` });
    await ready;
  }
  await sleep(FLEET_WARMUP_MS);
  for (const r of readers) r.bytes = 0;
  const myLoop = loopDelay();
  gateway.post({ op: 'eld', reset: true });
  fleet.post({ op: 'eld', reset: true });
  counting = true;
  const c0 = cpuSeconds(gateway.pid);
  const others0 = [cpuSeconds(process.pid), cpuSeconds(fleet.pid)];
  const t0 = now();
  await sleep(FLEET_MS);
  counting = false;
  const secs = ms(t0) / 1000;
  const cpu = cpuSeconds(gateway.pid) - c0;
  const loops = await Promise.all(
    [gateway, fleet].map((c) => {
      const w = c.wait('eld');
      c.post({ op: 'eld' });
      return w;
    }),
  );
  const fmtLoop = (l: { p99: number; max: number }) => `p99 ${l.p99.toFixed(1)} max ${l.max.toFixed(0)} ms`;
  log(
    NAME,
    `(${mode}: event-loop delay: relay ${mode === 'direct' ? '-' : fmtLoop(loops[0])}, viewers ${fmtLoop(myLoop.read())}, streams ${fmtLoop(loops[1])})`,
  );
  log(
    NAME,
    `(${mode}: viewers' process ${(((cpuSeconds(process.pid) - others0[0]) / secs) * 100).toFixed(0)}%, streams' process ${(((cpuSeconds(fleet.pid) - others0[1]) / secs) * 100).toFixed(0)}% CPU)`,
  );
  const stopped = fleet.wait('fleet-ready');
  fleet.post({ op: 'fleet', n: 0, stop: true });
  await stopped;
  for (const c of closers) c();
  server?.close();
  await sleep(500);
  return { lat, rates: readers.map((r) => (r.bytes * 8) / secs / 1e6), maxGaps: readers.map((r) => r.maxGapMs), cpu: mode === 'direct' ? 0 : cpu / secs };
}

function pct(xs: number[], p: number): number {
  const s = Float64Array.from(xs).sort();
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

async function viewers(): Promise<Metric[]> {
  const [gateway, bare, fleet] = await Promise.all([new Child('gateway').start(), new Child('bare-ws').start(), new Child('fleet').start()]);
  const res: Record<FleetMode, FleetResult[]> = { direct: [], tunnel: [], bare: [] };
  try {
    for (const mode of ['direct', 'tunnel', 'bare', 'bare', 'tunnel', 'direct'] as const) {
      const r = await fleetRun(fleet, mode, mode === 'bare' ? bare : gateway);
      res[mode].push(r);
      log(
        NAME,
        `${VIEWERS} viewers ${mode}: delay p50 ${pct(r.lat, 50).toFixed(2)} p99 ${pct(r.lat, 99).toFixed(2)} ms, rate min ${Math.min(...r.rates).toFixed(2)} median ${pct(r.rates, 50).toFixed(2)} Mbit/s, max gap ${Math.max(...r.maxGaps)} ms${mode === 'direct' ? '' : `, relay ${(r.cpu * 100).toFixed(0)}% CPU`}`,
      );
    }
  } finally {
    for (const c of [gateway, bare, fleet]) c.stop();
  }
  const all = (m: FleetMode, f: (r: FleetResult) => number[]) => res[m].flatMap(f);
  const lat = { direct: all('direct', (r) => r.lat), tunnel: all('tunnel', (r) => r.lat), bare: all('bare', (r) => r.lat) };
  const p = (m: FleetMode, q: number) => pct(lat[m], q);
  const added = (m: FleetMode) => `p50 +${(p(m, 50) - p('direct', 50)).toFixed(2)} ms, p99 +${(p(m, 99) - p('direct', 99)).toFixed(2)} ms`;
  const target = (RATE_BPS * 8) / 1e6;
  const rates = (m: FleetMode) => all(m, (r) => r.rates);
  const gaps = (m: FleetMode) => all(m, (r) => r.maxGaps);
  const starved = (m: FleetMode) => rates(m).filter((r, i) => r < 0.8 * target || gaps(m)[i] > 1000).length;
  const rateText = (m: FleetMode) =>
    `min ${Math.min(...rates(m)).toFixed(2)}, median ${pct(rates(m), 50).toFixed(2)} Mbit/s, max gap ${Math.max(...gaps(m))} ms, ${starved(m)} starved`;
  const cpu = (m: FleetMode) => ((res[m].reduce((a, r) => a + r.cpu, 0) / res[m].length) * 100).toFixed(0);
  return [
    {
      metric: `${VIEWERS} viewers × ${target} Mbit/s, one gateway: added delay`,
      ours: `${added('tunnel')} (p99 ${p('tunnel', 99).toFixed(2)} vs direct ${p('direct', 99).toFixed(2)} ms); gateway ${cpu('tunnel')}% of a core`,
      target: 'p99 < 5 ms added',
      peer: `bare ws relay: ${added('bare')}; ${cpu('bare')}% of a core`,
    },
    {
      metric: `${VIEWERS} viewers: per-viewer rate`,
      ours: rateText('tunnel'),
      target: `none starved (≥ ${(0.8 * target).toFixed(1)} Mbit/s, no gap > 1 s)`,
      peer: `bare ws relay: ${rateText('bare')}; direct TCP: ${rateText('direct')}`,
    },
  ];
}

export async function relayBench(): Promise<Metric[]> {
  const part = process.env.RELAY_PART;
  const rows = [...(part === 'viewers' ? [] : await bulk()), ...(part === 'bulk' ? [] : await viewers())];
  if (process.env.RELAY_REAL !== '0') {
    try {
      const { realTunnel } = await import('./vnc');
      rows.push(...(await realTunnel()));
    } catch (err) {
      rows.push({ metric: 'real tunnel (gateway + Docker agent + Xvnc)', ours: `FAILED: ${(err as Error).message.slice(0, 120)}`, target: '', peer: '' });
    }
  }
  return rows;
}

/** Event-loop delay (ms): a stalled loop delays every stream it relays. */
function loopDelay() {
  const h = monitorEventLoopDelay({ resolution: 5 });
  h.enable();
  return {
    read: () => ({ p99: h.percentile(99) / 1e6, max: h.max / 1e6 }),
    reset: () => h.reset(),
  };
}

if (require.main === module && process.argv[2] === 'child') {
  const eld = loopDelay();
  process.on('message', (m: ParentMsg) => {
    if (m.op !== 'eld') return;
    if (m.reset) eld.reset();
    else send({ op: 'eld', ...eld.read() });
  });
  const role = roles[process.argv[3]];
  if (!role) throw new Error(`unknown role ${process.argv[3]}`);
  process.on('disconnect', () => process.exit(0));
  process.on('SIGTERM', () => process.exit(0)); // (--cpu-prof writes its profile on exit)
  role();
}
