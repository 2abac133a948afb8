/**
 * Byte relays for the VNC tunnel, used at both ends (gateway: WebSocket ⇄ WebSocket; agent:
 * TCP ⇄ WebSocket; between two gateway pods: a raw splice, spliceSockets). Messages are forwarded as they arrive, without stream wrappers, and each
 * direction has its own backpressure: when more than HIGH_WATER bytes are queued towards a slow
 * peer, the source is paused until the queue drains below LOW_WATER. A close or error on either
 * side ends both.
 */
import type net from 'node:net';
import WebSocket from 'ws';

const HIGH_WATER = 1 << 20;
const LOW_WATER = 256 << 10;

export interface RelayHooks {
  /** Bytes forwarded a → b (first argument) and b → a; `data` is the chunk (read it, do not keep it). */
  onBytes?: (direction: 'ab' | 'ba', n: number, data: Buffer) => void;
  /** Called once, when the relay has ended on both sides. */
  onClose?: (code: number, reason: string) => void;
}

/**
 * Forwards chunks to a WebSocket, counting what the socket has not yet taken (send callbacks);
 * over HIGH_WATER the source pauses until that falls below LOW_WATER.
 */
function toWs(source: { pause(): void; resume(): void }, target: WebSocket) {
  let queued = 0;
  let paused = false;
  return (data: Buffer) => {
    if (target.readyState !== WebSocket.OPEN) return;
    const n = data.length;
    queued += n;
    target.send(data, SEND_OPTS, () => {
      queued -= n;
      if (paused && queued < LOW_WATER) {
        paused = false;
        source.resume();
      }
    });
    if (!paused && queued > HIGH_WATER) {
      paused = true;
      source.pause();
    }
  };
}

const SEND_OPTS = { binary: true } as const;

const asBuffer = (d: WebSocket.RawData): Buffer => (Buffer.isBuffer(d) ? d : Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d));

/** WebSocket ⇄ WebSocket (the gateway joining a viewer and an agent stream). */
export function relayWebSockets(a: WebSocket, b: WebSocket, hooks: RelayHooks = {}): () => void {
  const aToB = toWs(a, b);
  const bToA = toWs(b, a);
  a.on('message', (d) => {
    const buf = asBuffer(d);
    hooks.onBytes?.('ab', buf.length, buf);
    aToB(buf);
  });
  b.on('message', (d) => {
    const buf = asBuffer(d);
    hooks.onBytes?.('ba', buf.length, buf);
    bToA(buf);
  });
  let ended = false;
  const end = (code: number, reason: string) => {
    if (ended) return;
    ended = true;
    for (const ws of [a, b]) {
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(code, reason);
      setTimeout(() => ws.terminate(), 2000).unref();
    }
    hooks.onClose?.(code, reason);
  };
  a.once('close', () => end(1000, 'peer closed'));
  b.once('close', () => end(1011, 'session stream closed'));
  a.once('error', () => end(1011, 'viewer socket error'));
  b.once('error', () => end(1011, 'session stream error'));
  return () => end(1000, 'closed');
}

/** TCP ⇄ WebSocket (the agent joining the session's VNC port and its stream socket). */
export function relayTcpWebSocket(tcp: net.Socket, ws: WebSocket): void {
  tcp.setNoDelay(true);
  tcp.on('data', toWs(tcp, ws));
  ws.on('message', (d) => {
    if (!tcp.write(asBuffer(d))) {
      ws.pause();
      tcp.once('drain', () => ws.resume());
    }
  });
  const end = () => {
    tcp.destroy();
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, 'closed');
    setTimeout(() => ws.terminate(), 2000).unref();
  };
  tcp.once('close', end);
  tcp.once('error', end);
  ws.once('close', end);
  ws.once('error', end);
}

/**
 * Raw bytes both ways, no framing (a pod relaying a stream socket to another pod: the WebSocket
 * frames on both legs are the same, client-masked one way and unmasked the other). Backpressure by
 * pipe(); an end on one side ends the other once its data is written; a close or error on either
 * side ends both (destroyed after 2 s at the latest). TCP keep-alive catches a vanished peer.
 */
export function spliceSockets(a: net.Socket, b: net.Socket, hooks: Pick<RelayHooks, 'onClose'> = {}): () => void {
  for (const s of [a, b]) {
    s.setNoDelay(true);
    s.setKeepAlive(true, 30_000);
  }
  a.pipe(b);
  b.pipe(a);
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    for (const s of [a, b]) {
      s.end();
      setTimeout(() => s.destroy(), 2000).unref();
    }
    hooks.onClose?.(1000, 'closed');
  };
  for (const s of [a, b]) {
    s.once('close', end);
    s.on('error', () => {
      a.destroy();
      b.destroy();
      end();
    });
  }
  return () => {
    a.destroy();
    b.destroy();
    end();
  };
}
