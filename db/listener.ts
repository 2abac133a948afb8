/**
 * A dedicated connection that LISTENs on some channels and reconnects after a database restart.
 * Listeners must tolerate missed notifications (they all poll too); this only lowers latency.
 */
import { EventEmitter } from 'node:events';
import { Client } from 'pg';
import type { Logger } from '../config/log';

export class PgListener extends EventEmitter {
  private client: Client | null = null;
  private closed = false;
  private retryTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly url: string,
    private readonly channels: string[],
    private readonly log: Logger,
  ) {
    super();
    this.setMaxListeners(0);
  }

  async start(): Promise<void> {
    await this.connect();
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const client = new Client({ connectionString: this.url });
    client.on('notification', (n) => this.emit('notification', n.channel, n.payload ?? ''));
    client.on('error', (err) => {
      this.log.warn('notification connection lost; reconnecting', { error: err.message });
      this.scheduleReconnect(client);
    });
    client.on('end', () => this.scheduleReconnect(client));
    try {
      await client.connect();
      for (const ch of this.channels) await client.query(`LISTEN ${ch}`);
      this.client = client;
      this.emit('reconnected');
    } catch (err) {
      this.log.warn('cannot LISTEN yet; retrying', { error: (err as Error).message });
      this.scheduleReconnect(client);
    }
  }

  private scheduleReconnect(client: Client): void {
    if (this.closed || this.retryTimer) return;
    if (this.client === client) this.client = null;
    client.removeAllListeners('end');
    client.end().catch(() => undefined);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      void this.connect();
    }, 1000);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const c = this.client;
    this.client = null;
    if (c) {
      c.removeAllListeners('end');
      await c.end().catch(() => undefined);
    }
  }
}
