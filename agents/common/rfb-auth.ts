/**
 * RFB security for the VNC tunnel. Every session's VNC server demands VncAuth (RFB security type
 * 2) with a per-session password that only the session's agent holds; the agent completes that
 * handshake itself (serverHandshake) and then offers the viewer, whom the gateway has already
 * admitted with a single-use ticket, security type None only (viewerHandshake). After both
 * handshakes the bytes (ClientInit onwards) are relayed unchanged.
 *
 * VncAuth: the server sends a 16-byte challenge; the client answers with the challenge
 * DES-encrypted (ECB, two blocks) under the password (truncated/zero-padded to 8 bytes) with the
 * bits of every key byte reversed (RFC 6143 §7.2.2 and its errata). Node's OpenSSL 3 keeps DES in
 * the legacy provider, usually not loaded, so DES is implemented here (one block cipher, no
 * modes, only what VncAuth needs).
 */
import { randomInt } from 'node:crypto';
import type { Duplex } from 'node:stream';

export const SECURITY_NONE = 1;
export const SECURITY_VNC_AUTH = 2;

/** Drivers that keep a per-session VNC password implement this (agent side only, never sent to the control plane). */
export interface VncSecretSource {
  vncPassword(sessionId: string): Promise<string | null>;
}
export const hasVncSecrets = (d: unknown): d is VncSecretSource => typeof (d as Partial<VncSecretSource>)?.vncPassword === 'function';

/** The environment variable that hands the password to the session's entrypoint. */
export const VNC_PASSWORD_ENV = 'VNC_PASSWORD';

/**
 * A fresh VncAuth password: 8 characters (VncAuth uses only the first 8 bytes) from a 64-letter
 * alphabet, 48 random bits. Printable on purpose: it goes through an environment variable and
 * `vncpasswd -f` in the session image.
 */
export function generateVncPassword(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
  let s = '';
  for (let i = 0; i < 8; i++) s += alphabet[randomInt(alphabet.length)];
  return s;
}

// ---------------------------------------------------------------- DES (FIPS 46-3), one block

const PC1 = [
  57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60, 52, 44, 36, 63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30,
  22, 14, 6, 61, 53, 45, 37, 29, 21, 13, 5, 28, 20, 12, 4,
];
const PC2 = [
  14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2, 41, 52, 31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34,
  53, 46, 42, 50, 36, 29, 32,
];
const SHIFTS = [1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1];
const IP = [
  58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, 62, 54, 46, 38, 30, 22, 14, 6, 64, 56, 48, 40, 32, 24, 16, 8, 57, 49, 41, 33, 25, 17, 9, 1, 59,
  51, 43, 35, 27, 19, 11, 3, 61, 53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
];
const FP = [
  40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31, 38, 6, 46, 14, 54, 22, 62, 30, 37, 5, 45, 13, 53, 21, 61, 29, 36, 4, 44, 12, 52, 20, 60, 28, 35,
  3, 43, 11, 51, 19, 59, 27, 34, 2, 42, 10, 50, 18, 58, 26, 33, 1, 41, 9, 49, 17, 57, 25,
];
const E = [
  32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17, 16, 17, 18, 19, 20, 21, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28,
  29, 30, 31, 32, 1,
];
const P = [16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, 2, 8, 24, 14, 32, 27, 3, 9, 19, 13, 30, 6, 22, 11, 4, 25];
const S = [
  [
    14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7, 0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12, 11, 9, 5, 3, 8, 4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10,
    5, 0, 15, 12, 8, 2, 4, 9, 1, 7, 5, 11, 3, 14, 10, 0, 6, 13,
  ],
  [
    15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10, 3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1, 10, 6, 9, 11, 5, 0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3,
    2, 15, 13, 8, 10, 1, 3, 15, 4, 2, 11, 6, 7, 12, 0, 5, 14, 9,
  ],
  [
    10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8, 13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5, 14, 12, 11, 15, 1, 13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10,
    14, 7, 1, 10, 13, 0, 6, 9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12,
  ],
  [
    7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15, 13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2, 12, 1, 10, 14, 9, 10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2,
    8, 4, 3, 15, 0, 6, 10, 1, 13, 8, 9, 4, 5, 11, 12, 7, 2, 14,
  ],
  [
    2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9, 14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15, 10, 3, 9, 8, 6, 4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3,
    0, 14, 11, 8, 12, 7, 1, 14, 2, 13, 6, 15, 0, 9, 10, 4, 5, 3,
  ],
  [
    12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11, 10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13, 14, 0, 11, 3, 8, 9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13,
    11, 6, 4, 3, 2, 12, 9, 5, 15, 10, 11, 14, 1, 7, 6, 0, 8, 13,
  ],
  [
    4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1, 13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5, 12, 2, 15, 8, 6, 1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5,
    9, 2, 6, 11, 13, 8, 1, 4, 10, 7, 9, 5, 0, 15, 14, 2, 3, 12,
  ],
  [
    13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7, 1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6, 11, 0, 14, 9, 2, 7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3,
    5, 8, 2, 1, 14, 7, 4, 10, 8, 13, 15, 12, 9, 0, 3, 5, 6, 11,
  ],
];

const bitsOf = (b: Uint8Array): number[] => {
  const out: number[] = [];
  for (const byte of b) for (let i = 7; i >= 0; i--) out.push((byte >> i) & 1);
  return out;
};
const bytesOf = (bits: number[]): Buffer => {
  const out = Buffer.alloc(bits.length / 8);
  bits.forEach((bit, i) => (out[i >> 3] |= bit << (7 - (i & 7))));
  return out;
};
const permute = (bits: number[], table: number[]) => table.map((p) => bits[p - 1]);
const rotl = (half: number[], n: number) => [...half.slice(n), ...half.slice(0, n)];

/** DES-encrypts one 8-byte block under an 8-byte key (parity bits ignored). */
export function desEncryptBlock(key: Uint8Array, block: Uint8Array): Buffer {
  if (key.length !== 8 || block.length !== 8) throw new Error('DES takes an 8-byte key and an 8-byte block');
  const cd = permute(bitsOf(key), PC1);
  let c = cd.slice(0, 28);
  let d = cd.slice(28);
  const subkeys: number[][] = [];
  for (const s of SHIFTS) {
    c = rotl(c, s);
    d = rotl(d, s);
    subkeys.push(permute([...c, ...d], PC2));
  }
  const lr = permute(bitsOf(block), IP);
  let l = lr.slice(0, 32);
  let r = lr.slice(32);
  for (const k of subkeys) {
    const x = permute(r, E).map((bit, i) => bit ^ k[i]);
    const sOut: number[] = [];
    for (let i = 0; i < 8; i++) {
      const six = x.slice(i * 6, i * 6 + 6);
      const row = (six[0] << 1) | six[5];
      const col = (six[1] << 3) | (six[2] << 2) | (six[3] << 1) | six[4];
      const v = S[i][row * 16 + col];
      sOut.push((v >> 3) & 1, (v >> 2) & 1, (v >> 1) & 1, v & 1);
    }
    const f = permute(sOut, P);
    [l, r] = [r, l.map((bit, i) => bit ^ f[i])];
  }
  return bytesOf(permute([...r, ...l], FP));
}

const reverseBits = (b: number) => {
  let r = 0;
  for (let i = 0; i < 8; i++) r |= ((b >> i) & 1) << (7 - i);
  return r;
};

/** The VncAuth response to a 16-byte challenge. */
export function vncAuthResponse(password: string, challenge: Uint8Array): Buffer {
  if (challenge.length !== 16) throw new Error('VncAuth challenge must be 16 bytes');
  const key = Buffer.alloc(8);
  Buffer.from(password, 'latin1').copy(key, 0, 0, 8);
  for (let i = 0; i < 8; i++) key[i] = reverseBits(key[i]);
  return Buffer.concat([desEncryptBlock(key, challenge.subarray(0, 8)), desEncryptBlock(key, challenge.subarray(8, 16))]);
}

// ---------------------------------------------------------------- handshakes

/** Reads exact byte counts from a stream in paused mode; leftover bytes stay in the stream. */
class ExactReader {
  constructor(private readonly pull: (n: number) => Promise<Buffer>) {}
  read(n: number): Promise<Buffer> {
    return this.pull(n);
  }
  async u32(): Promise<number> {
    return (await this.read(4)).readUInt32BE(0);
  }
  async reason(): Promise<string> {
    const len = await this.u32();
    return len > 0 ? (await this.read(Math.min(len, 4096))).toString('utf8') : '';
  }
}

/** Reads n bytes from a net.Socket (or any Duplex) without switching it to flowing mode. */
function socketReader(sock: Duplex, timeoutMs: number, what: string): ExactReader {
  return new ExactReader(
    (n) =>
      new Promise<Buffer>((resolve, reject) => {
        const cleanup = () => {
          clearTimeout(timer);
          sock.off('readable', tryRead);
          sock.off('error', onError);
          sock.off('close', onClose);
          sock.off('end', onClose);
        };
        const tryRead = () => {
          const b = sock.read(n) as Buffer | null;
          if (b) {
            cleanup();
            resolve(b);
          }
        };
        const onError = (e: Error) => (cleanup(), reject(e));
        const onClose = () => (cleanup(), reject(new Error(`${what} closed during the RFB handshake`)));
        const timer = setTimeout(() => (cleanup(), reject(new Error(`${what}: RFB handshake timed out`))), timeoutMs);
        sock.on('readable', tryRead);
        sock.once('error', onError);
        sock.once('close', onClose);
        sock.once('end', onClose);
        tryRead();
      }),
  );
}

function parseVersion(v: Buffer): { major: number; minor: number } {
  const m = /^RFB (\d{3})\.(\d{3})\n$/.exec(v.toString('latin1'));
  if (!m) throw new Error(`not an RFB peer (said ${JSON.stringify(v.toString('latin1'))})`);
  return { major: Number(m[1]), minor: Number(m[2]) };
}

/**
 * The client side of the RFB security handshake against the session's VNC server, on a connected
 * socket: version, security (VncAuth with the session's password, or None if the server offers
 * only that), SecurityResult. Resolves when the server waits for ClientInit; the socket is left in
 * paused mode with nothing consumed beyond the handshake. Throws with the server's reason.
 */
export async function serverHandshake(sock: Duplex, password: string | null, timeoutMs = 10_000): Promise<'vnc-auth' | 'none'> {
  const r = socketReader(sock, timeoutMs, 'the VNC server');
  const { major, minor } = parseVersion(await r.read(12));
  if (major !== 3) throw new Error(`unsupported RFB version ${major}.${minor}`);
  const version = minor >= 8 ? 8 : minor >= 7 ? 7 : 3;
  sock.write(`RFB 003.00${version}\n`);
  let chosen: number;
  if (version === 3) {
    chosen = await r.u32();
    if (chosen === 0) throw new Error(`the VNC server refused the connection: ${await r.reason()}`);
  } else {
    const count = (await r.read(1))[0];
    if (count === 0) throw new Error(`the VNC server refused the connection: ${await r.reason()}`);
    const types = [...(await r.read(count))];
    if (types.includes(SECURITY_VNC_AUTH) && password) chosen = SECURITY_VNC_AUTH;
    else if (types.includes(SECURITY_NONE)) chosen = SECURITY_NONE;
    else
      throw new Error(
        types.includes(SECURITY_VNC_AUTH)
          ? 'the VNC server demands VncAuth and the agent holds no password for this session'
          : `the VNC server offers security types ${types.join(',')}; the agent speaks None (1) and VncAuth (2)`,
      );
    sock.write(Buffer.from([chosen]));
  }
  if (chosen === SECURITY_VNC_AUTH) {
    if (!password) throw new Error('the VNC server demands VncAuth and the agent holds no password for this session');
    const challenge = await r.read(16);
    sock.write(vncAuthResponse(password, challenge));
  } else if (chosen !== SECURITY_NONE) {
    throw new Error(`the VNC server chose security type ${chosen}; the agent speaks None (1) and VncAuth (2)`);
  }
  if (chosen === SECURITY_VNC_AUTH || version === 8) {
    const result = await r.u32();
    if (result !== 0) {
      const reason = version === 8 ? await r.reason() : '';
      throw new Error(`VNC authentication failed${reason ? `: ${reason}` : ''}`);
    }
  }
  return chosen === SECURITY_VNC_AUTH ? 'vnc-auth' : 'none';
}

/** A byte source fed by message events (the viewer's WebSocket), read in exact counts. */
export class MessageReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
  private failed: Error | null = null;

  push(d: Buffer): void {
    this.chunks.push(d);
    this.buffered += d.length;
    this.pump();
  }

  fail(err: Error): void {
    this.failed ??= err;
    if (this.want) {
      clearTimeout(this.want.timer);
      this.want.reject(err);
      this.want = null;
    }
  }

  read(n: number, timeoutMs: number): Promise<Buffer> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.want = null;
        reject(new Error('the viewer: RFB handshake timed out'));
      }, timeoutMs);
      this.want = { n, resolve, reject, timer };
      this.pump();
    });
  }

  /** Whatever arrived beyond what was read. */
  drain(): Buffer {
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private pump(): void {
    const w = this.want;
    if (!w || this.buffered < w.n) return;
    this.want = null;
    clearTimeout(w.timer);
    const all = Buffer.concat(this.chunks);
    this.chunks = all.length > w.n ? [all.subarray(w.n)] : [];
    this.buffered = all.length - w.n;
    w.resolve(all.subarray(0, w.n));
  }
}

/**
 * The server side of the RFB security handshake towards the viewer (already admitted by the
 * gateway's ticket): offers RFB 3.8 and security type None only. `send` writes to the viewer,
 * `reader` yields what the viewer sent. Resolves when the viewer's next bytes are its ClientInit.
 */
export async function viewerHandshake(send: (b: Buffer) => void, reader: MessageReader, timeoutMs = 10_000): Promise<void> {
  send(Buffer.from('RFB 003.008\n', 'latin1'));
  const { major, minor } = parseVersion(await reader.read(12, timeoutMs));
  if (major !== 3) throw new Error(`viewer speaks unsupported RFB version ${major}.${minor}`);
  if (minor < 7) {
    // RFB 3.3: the server decides the security type.
    const b = Buffer.alloc(4);
    b.writeUInt32BE(SECURITY_NONE);
    send(b);
    return;
  }
  send(Buffer.from([1, SECURITY_NONE]));
  const chosen = (await reader.read(1, timeoutMs))[0];
  if (chosen !== SECURITY_NONE) {
    if (minor >= 8) {
      const reason = Buffer.from('only security type None is offered', 'utf8');
      const head = Buffer.alloc(8);
      head.writeUInt32BE(1, 0);
      head.writeUInt32BE(reason.length, 4);
      send(Buffer.concat([head, reason]));
    }
    throw new Error(`viewer chose security type ${chosen}`);
  }
  if (minor >= 8) send(Buffer.alloc(4)); // SecurityResult OK
}
