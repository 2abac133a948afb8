/**
 * Finds the user's input in a viewer's RFB byte stream (viewer → session; RFC 6143 §7.5), as the
 * gateway relays it: key events, pointer events, QEMU extended key events and clipboard text are
 * input; update requests, pixel formats, encodings, fences and resizes are not (an open but
 * untouched viewer sends only those). The scanner walks message boundaries without copying;
 * a message type it does not know ends the scan for that stream (it reports no more input rather
 * than guessing).
 *
 * Handshake as the agent presents it to the viewer (agents/common/rfb-auth.ts viewerHandshake):
 * the viewer's ProtocolVersion (12 bytes), for 3.7+ its choice of security type None (1 byte),
 * then ClientInit (1 byte); client messages follow.
 */

export class RfbInputScanner {
  /** Bytes of the handshake still to skip; computed once the version is known. */
  private handshake = -1;
  private readonly version = Buffer.alloc(12);
  private versionLen = 0;
  /** The message being walked: its header bytes so far (bodies are only counted), in a fixed buffer. */
  private readonly header = Buffer.alloc(MAX_HEADER);
  private headerLen = 0;
  private remaining = 0;
  private lost = false;

  /** Scans one chunk; true when it held user input. */
  scan(chunk: Buffer): boolean {
    if (this.lost) return false;
    let i = 0;
    let input = false;
    const n = chunk.length;
    while (i < n) {
      if (this.remaining > 0) {
        const k = Math.min(this.remaining, n - i);
        this.remaining -= k;
        i += k;
        continue;
      }
      if (this.handshake !== 0) {
        if (this.handshake < 0) {
          const k = Math.min(12 - this.versionLen, n - i);
          chunk.copy(this.version, this.versionLen, i, i + k);
          this.versionLen += k;
          i += k;
          if (this.versionLen < 12) return input;
          const minor = Number(this.version.toString('latin1', 8, 11));
          this.handshake = (minor >= 7 ? 1 : 0) + 1; // security type choice, ClientInit
          continue;
        }
        const k = Math.min(this.handshake, n - i);
        this.handshake -= k;
        i += k;
        continue;
      }
      // Start or continue a message header until its length is known.
      this.header[this.headerLen++] = chunk[i++];
      const len = messageLength(this.header, this.headerLen);
      if (len === null) continue; // need more header bytes
      if (len < 0) {
        this.lost = true;
        return input;
      }
      const type = this.header[0];
      // KeyEvent, PointerEvent, ClientCutText, QEMU extended key event
      if (type === 4 || type === 5 || type === 6 || (type === 255 && this.headerLen >= 2 && this.header[1] === 0)) input = true;
      this.remaining = len - this.headerLen;
      this.headerLen = 0;
    }
    return input;
  }
}

/** The longest header messageLength() reads (ClientFence: 9 bytes). */
const MAX_HEADER = 9;

/**
 * The whole message's length from its first bytes; null: more header bytes needed; -1: unknown
 * message type.
 */
function messageLength(h: Buffer, length: number): number | null {
  const need = (n: number) => length < n;
  switch (h[0]) {
    case 0: // SetPixelFormat
      return 20;
    case 2: // SetEncodings: u8 type, pad, u16 count, s32 × count
      return need(4) ? null : 4 + 4 * h.readUInt16BE(2);
    case 3: // FramebufferUpdateRequest
      return 10;
    case 4: // KeyEvent
      return 8;
    case 5: // PointerEvent
      return 6;
    case 6: // ClientCutText: u8 type, 3 pad, s32 length (negative: extended clipboard, |length| bytes)
      return need(8) ? null : 8 + Math.abs(h.readInt32BE(4));
    case 150: // EnableContinuousUpdates
      return 10;
    case 248: // ClientFence: type, 3 pad, u32 flags, u8 length, payload
      return need(9) ? null : 9 + h[8];
    case 251: // SetDesktopSize: type, pad, u16 w, u16 h, u8 screens, pad, 16 × screens
      return need(7) ? null : 8 + 16 * h[6];
    case 252: // xvp
      return 4;
    case 255: // QEMU: subtype 0 = extended key event (12 bytes); subtype 1 = audio (u16 op; op 2 carries 6 more)
      if (need(2)) return null;
      if (h[1] === 0) return 12;
      if (h[1] === 1) return need(4) ? null : h.readUInt16BE(2) === 2 ? 10 : 4;
      return -1;
    default:
      return -1;
  }
}
