import WebSocket from 'ws';

export type ViewerResult = { ws: WebSocket; greeting: string } | { status: number; body: string };

/** Opens a VNC viewer socket on a gateway port and resolves with the RFB greeting (first 12 bytes) or the refusal. */
export function openViewer(port: number, url: string): Promise<ViewerResult> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}${url}`);
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    let buf = Buffer.alloc(0);
    ws.on('message', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 12) resolve({ ws, greeting: buf.subarray(0, 12).toString('latin1') });
    });
    ws.on('error', (e) => reject(e));
  });
}
