/**
 * Agent side of the VNC tunnel. For each open_stream request the agent dials a dedicated
 * WebSocket back to the gateway (never the control socket, so VNC bytes cannot delay commands
 * or heartbeats) and a TCP connection to the session's VNC server, then pipes them together.
 * The relay (protocol/relay.ts) keeps backpressure both ways and tears both sides down on any
 * error or close.
 *
 * Before relaying, the agent completes the RFB security handshake with the session's VNC server
 * itself (VncAuth with the per-session password only this agent holds, agents/common/rfb-auth.ts)
 * and then offers the viewer, whom the gateway admitted with a single-use ticket, security type
 * None only. So the browser needs no VNC password, and nobody reaching the VNC port directly gets
 * a desktop without that password.
 */
import net from 'node:net';
import WebSocket from 'ws';
import type { Logger } from '../../config/log';
import type { OpenStreamMessage } from '../../protocol/messages';
import { relayTcpWebSocket } from '../../protocol/relay';
import { hasVncSecrets, MessageReader, serverHandshake, viewerHandshake } from './rfb-auth';
import type { AgentRuntime } from './runtime';

export function attachTunnel(runtime: AgentRuntime, log: Logger): { open: () => number } {
  const live = new Set<net.Socket>();
  runtime.onOpenStream = (msg) => void openStream(runtime, msg, log, live);
  return { open: () => live.size };
}

async function openStream(runtime: AgentRuntime, msg: OpenStreamMessage, log: Logger, live: Set<net.Socket>): Promise<void> {
  let endpoint;
  try {
    endpoint = await runtime.driver.vncEndpoint(msg.session_id);
  } catch (err) {
    reportFailure(runtime, msg, `cannot locate the session's VNC server: ${(err as Error).message}`);
    return;
  }
  const tcp = net.connect({ host: endpoint.host, port: endpoint.port, noDelay: true });
  live.add(tcp);
  tcp.once('close', () => live.delete(tcp));
  try {
    await new Promise<void>((resolve, reject) => {
      tcp.once('connect', resolve);
      tcp.once('error', reject);
    });
  } catch (err) {
    reportFailure(runtime, msg, `cannot connect to ${endpoint.host}:${endpoint.port}: ${(err as Error).message}`);
    return;
  }
  // The server's security handshake first: a failure reaches the viewer as a stream error.
  try {
    const password = hasVncSecrets(runtime.driver) ? await runtime.driver.vncPassword(msg.session_id) : null;
    await serverHandshake(tcp, password);
  } catch (err) {
    tcp.destroy();
    log.warn('VNC security handshake with the session failed', { session: msg.session_id, stream: msg.stream_id, error: (err as Error).message });
    reportFailure(runtime, msg, `VNC security handshake with the session failed: ${(err as Error).message}`);
    return;
  }
  const url = new URL(msg.url, runtime.url.replace(/^http/, 'ws')).toString();
  const ws = new WebSocket(url, streamSocketOptions(runtime.config.token));
  ws.once('unexpected-response', (_req, res) => {
    log.warn('gateway refused the stream socket', { stream: msg.stream_id, status: res.statusCode });
    tcp.destroy();
  });
  ws.once('error', (err) => {
    log.debug('stream socket error', { stream: msg.stream_id, error: err.message });
    tcp.destroy();
  });
  // The viewer's side of the handshake: what it sends before ClientInit is consumed here.
  const viewer = new MessageReader();
  const collect = (d: WebSocket.RawData) => viewer.push(Buffer.isBuffer(d) ? d : Array.isArray(d) ? Buffer.concat(d) : Buffer.from(d));
  ws.on('message', collect);
  ws.once('close', () => viewer.fail(new Error('the viewer closed during the RFB handshake')));
  tcp.once('close', () => viewer.fail(new Error('the VNC server closed during the RFB handshake')));
  ws.once('open', () => {
    (ws as unknown as { _socket?: net.Socket })._socket?.setNoDelay(true);
    viewerHandshake((b) => ws.send(b, { binary: true }), viewer).then(
      () => {
        ws.off('message', collect);
        const rest = viewer.drain();
        if (rest.length) tcp.write(rest);
        relayTcpWebSocket(tcp, ws);
      },
      (err: Error) => {
        log.debug('viewer RFB handshake failed', { stream: msg.stream_id, error: err.message });
        tcp.destroy();
        ws.close(1008, 'RFB handshake failed');
      },
    );
  });
}

/** The stream socket's options (also used by bench/relay.ts, so the bench measures these). */
export function streamSocketOptions(token: string): WebSocket.ClientOptions {
  return {
    headers: { authorization: `Bearer ${token}` },
    perMessageDeflate: false,
    handshakeTimeout: 10_000,
    // Client frames must be masked, but the mask only protects browsers' intermediaries from
    // crafted bytes; an agent is not a browser, and an all-zero mask lets ws skip the XOR pass
    // over every VNC byte.
    generateMask: (mask: Buffer) => void mask.fill(0),
  };
}

/**
 * Tells the gateway why a stream cannot open: on the control socket, and on the stream URL itself
 * (the pod waiting for the stream may not be the one holding the control socket).
 */
function reportFailure(runtime: AgentRuntime, msg: OpenStreamMessage, error: string): void {
  runtime.streamError(msg.stream_id, error);
  const url = new URL(msg.url, runtime.url.replace(/^http/, 'ws'));
  url.searchParams.set('error', error.slice(0, 1000));
  const ws = new WebSocket(url.toString(), { headers: { authorization: `Bearer ${runtime.config.token}` }, handshakeTimeout: 5000 });
  ws.on('unexpected-response', (req) => req.destroy());
  ws.on('error', () => undefined);
  ws.on('open', () => ws.terminate());
}
