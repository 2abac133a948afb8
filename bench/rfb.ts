/**
 * A minimal RFB 3.8 client for the benches, over any byte duplex: a TCP socket straight to the
 * VNC server, or the gateway's viewer WebSocket (ws.createWebSocketStream). Only what the benches
 * need: handshake with security None (or VncAuth with the session's password, straight to a session's
 * VNC server), SetPixelFormat (32 bpp), SetEncodings [Raw], and
 * FramebufferUpdateRequest → read the whole FramebufferUpdate.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import WebSocket, { createWebSocketStream } from 'ws';
import { vncAuthResponse } from '../agents/common/rfb-auth';

/** How long any single read may wait: a stalled connection fails the bench instead of hanging it. */
const READ_TIMEOUT_MS = 10_000;

/** Reads exact byte counts from a flowing stream without copying what it only skips. */
class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; keep: boolean; resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
  private error: Error | null = null;
  /** Bytes received in total (for diagnosing a stall). */
  received = 0;

  constructor(stream: Duplex) {
    stream.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      this.received += d.length;
      this.pump();
    });
    const fail = (err: Error) => {
      this.error ??= err;
      if (this.want) clearTimeout(this.want.timer);
      this.want?.reject(this.error);
      this.want = null;
    };
    stream.on('error', fail);
    stream.on('close', () => fail(new Error('connection closed')));
    stream.on('end', () => fail(new Error('connection ended')));
  }

  /** The next n bytes. */
  read(n: number): Promise<Buffer> {
    return this.take(n, true);
  }

  /** Consumes n bytes (pixel data) without assembling them. */
  async skip(n: number): Promise<void> {
    await this.take(n, false);
  }

  private take(n: number, keep: boolean): Promise<Buffer> {
    if (this.want) return Promise.reject(new Error('one read at a time'));
    if (this.error) return Promise.reject(this.error);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.want = null;
        reject(new Error(`stalled: ${this.buffered} of ${n} bytes after ${READ_TIMEOUT_MS} ms (${this.received} received in all)`));
      }, READ_TIMEOUT_MS);
      this.want = { n, keep, resolve, reject, timer };
      this.pump();
    });
  }

  private pump(): void {
    const w = this.want;
    if (!w || this.buffered < w.n) return;
    this.want = null;
    clearTimeout(w.timer);
    let left = w.n;
    const parts: Buffer[] = [];
    while (left > 0) {
      const c = this.chunks[0];
      if (c.length <= left) {
        this.chunks.shift();
        if (w.keep) parts.push(c);
        left -= c.length;
      } else {
        if (w.keep) parts.push(c.subarray(0, left));
        this.chunks[0] = c.subarray(left);
        left = 0;
      }
    }
    this.buffered -= w.n;
    w.resolve(w.keep ? (parts.length === 1 ? parts[0] : Buffer.concat(parts, w.n)) : Buffer.alloc(0));
  }
}

export interface ServerInit {
  version: string;
  width: number;
  height: number;
  bitsPerPixel: number;
  name: string;
}

export class RfbClient {
  private readonly reader: ByteReader;
  private bytesPerPixel = 4;
  /** Bytes read in FramebufferUpdates (headers and pixels). */
  updateBytes = 0;

  private constructor(
    private readonly stream: Duplex,
    private readonly password: string | null = null,
  ) {
    this.reader = new ByteReader(stream);
  }

  /** Straight TCP to the VNC server; a session's server demands its VncAuth password. */
  static async tcp(host: string, port: number, password: string | null = null): Promise<RfbClient> {
    const sock = net.connect({ host, port, noDelay: true });
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve);
      sock.once('error', reject);
    });
    return new RfbClient(sock, password);
  }

  /** Through the gateway's viewer WebSocket (binary frames both ways). */
  static async websocket(url: string): Promise<RfbClient> {
    const ws = new WebSocket(url, { perMessageDeflate: false });
    // Wrap (and so listen for messages) right away, not after 'open': when the 101 response and
    // the server's first frame arrive in one read, ws emits that frame on the next tick after
    // 'open', before an awaiting caller could attach a listener, and it would be lost.
    const client = new RfbClient(createWebSocketStream(ws));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => {
        reject(new Error(`tunnel refused: HTTP ${res.statusCode}`));
        ws.terminate();
      });
    });
    return client;
  }

  /** Only the 12-byte ServerVersion (to check a server answers), then hang up. */
  async greeting(): Promise<string> {
    const v = (await this.reader.read(12)).toString('latin1');
    this.close();
    return v;
  }

  /** Version, security None (or VncAuth with the password), ClientInit(shared), ServerInit; then 32 bpp pixels, Raw only. */
  async handshake(): Promise<ServerInit> {
    const version = (await this.reader.read(12)).toString('latin1');
    if (!version.startsWith('RFB 003.')) throw new Error(`not an RFB server: ${JSON.stringify(version)}`);
    this.stream.write('RFB 003.008\n');
    const count = (await this.reader.read(1))[0];
    if (count === 0) throw new Error(`server refused: ${await this.reason()}`);
    const types = [...(await this.reader.read(count))];
    if (this.password && types.includes(2)) {
      this.stream.write(Buffer.from([2]));
      this.stream.write(vncAuthResponse(this.password, await this.reader.read(16)));
    } else {
      if (!types.includes(1)) throw new Error(`security None not offered (types ${types.join(',')})`);
      this.stream.write(Buffer.from([1]));
    }
    const result = (await this.reader.read(4)).readUInt32BE(0);
    if (result !== 0) throw new Error(`security handshake failed: ${await this.reason()}`);
    this.stream.write(Buffer.from([1])); // ClientInit: shared
    const init = await this.reader.read(24);
    const name = (await this.reader.read(init.readUInt32BE(20))).toString('utf8');

    // SetPixelFormat: 32 bpp, depth 24, little-endian true colour (4 bytes a pixel in Raw).
    const spf = Buffer.alloc(20);
    spf[0] = 0;
    spf[4] = 32;
    spf[5] = 24;
    spf[6] = 0;
    spf[7] = 1;
    spf.writeUInt16BE(255, 8);
    spf.writeUInt16BE(255, 10);
    spf.writeUInt16BE(255, 12);
    spf[14] = 16;
    spf[15] = 8;
    spf[16] = 0;
    this.bytesPerPixel = 4;
    // SetEncodings: Raw (0) only.
    const enc = Buffer.alloc(8);
    enc[0] = 2;
    enc.writeUInt16BE(1, 2);
    enc.writeInt32BE(0, 4);
    this.stream.write(Buffer.concat([spf, enc]));
    return { version: version.trim(), width: init.readUInt16BE(0), height: init.readUInt16BE(2), bitsPerPixel: init[4], name };
  }

  private async reason(): Promise<string> {
    const len = (await this.reader.read(4)).readUInt32BE(0);
    return (await this.reader.read(len)).toString('utf8');
  }

  /** Sends one FramebufferUpdateRequest. */
  /** KeyEvent: a key press and its release (X11 keysym). */
  key(keysym: number): void {
    for (const down of [1, 0]) {
      const b = Buffer.alloc(8);
      b[0] = 4;
      b[1] = down;
      b.writeUInt32BE(keysym, 4);
      this.stream.write(b);
    }
  }

  /** PointerEvent: the pointer at (x, y) with these buttons down. */
  pointer(x: number, y: number, buttons = 0): void {
    const b = Buffer.alloc(6);
    b[0] = 5;
    b[1] = buttons;
    b.writeUInt16BE(x, 2);
    b.writeUInt16BE(y, 4);
    this.stream.write(b);
  }

  request(x: number, y: number, w: number, h: number, incremental = false): void {
    const b = Buffer.alloc(10);
    b[0] = 3;
    b[1] = incremental ? 1 : 0;
    b.writeUInt16BE(x, 2);
    b.writeUInt16BE(y, 4);
    b.writeUInt16BE(w, 6);
    b.writeUInt16BE(h, 8);
    this.stream.write(b);
  }

  /** Reads server messages until one FramebufferUpdate has been read in full; returns its size. */
  async readUpdate(): Promise<number> {
    for (;;) {
      const type = (await this.reader.read(1))[0];
      switch (type) {
        case 0: {
          const hdr = await this.reader.read(3);
          const rects = hdr.readUInt16BE(1);
          let bytes = 4;
          for (let i = 0; i < rects; i++) {
            const r = await this.reader.read(12);
            const w = r.readUInt16BE(4);
            const h = r.readUInt16BE(6);
            const encoding = r.readInt32BE(8);
            if (encoding !== 0) throw new Error(`unexpected encoding ${encoding} (only Raw was requested)`);
            const n = w * h * this.bytesPerPixel;
            await this.reader.skip(n);
            bytes += 12 + n;
          }
          this.updateBytes += bytes;
          return bytes;
        }
        case 1: {
          // SetColourMapEntries: padding, first colour, count, 6 bytes each.
          const hdr = await this.reader.read(5);
          await this.reader.skip(hdr.readUInt16BE(3) * 6);
          break;
        }
        case 2: // Bell
          break;
        case 3: {
          // ServerCutText: 3 padding, length, text.
          const hdr = await this.reader.read(7);
          await this.reader.skip(hdr.readUInt32BE(3));
          break;
        }
        default:
          throw new Error(`unknown server message type ${type}`);
      }
    }
  }

  close(): void {
    this.stream.destroy();
  }
}
