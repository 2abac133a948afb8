/** Lets many waiting activities share one LISTEN connection for "command finished" events. */
import { CHANNEL_COMMAND_DONE } from '../db/commands';
import type { PgListener } from '../db/listener';

/** How long a "finished" notification is remembered for a waiter that registers late. */
const REMEMBER_MS = 30_000;

export class CommandWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();
  /** Notifications seen lately: command id → the mark() count when it arrived (oldest first). */
  private readonly recent = new Map<string, { seq: number; at: number }>();
  private seq = 0;

  constructor(listener: PgListener) {
    listener.on('notification', (channel: string, payload: string) => {
      if (channel !== CHANNEL_COMMAND_DONE) return;
      const now = Date.now();
      this.recent.delete(payload);
      this.recent.set(payload, { seq: ++this.seq, at: now });
      for (const [id, r] of this.recent) {
        if (now - r.at < REMEMBER_MS) break;
        this.recent.delete(id);
      }
      const set = this.waiting.get(payload);
      if (set) for (const wake of set) wake();
    });
  }

  /** A point in the notification stream: take it before reading a command's row, pass it to wait(). */
  mark(): number {
    return this.seq;
  }

  /**
   * Resolves when the command is reported finished, or after `ms` (callers re-check the row). With
   * `since` (a mark() taken before the row was read), a notification that arrived after the mark
   * but before this call resolves at once: no wait on a poll interval for a command that finished
   * between the read and the wait.
   */
  wait(commandId: string, ms: number, since?: number): Promise<void> {
    const seen = this.recent.get(commandId);
    if (since !== undefined && seen && seen.seq > since) return Promise.resolve();
    return new Promise((resolve) => {
      let set = this.waiting.get(commandId);
      if (!set) this.waiting.set(commandId, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        set!.delete(done);
        if (set!.size === 0) this.waiting.delete(commandId);
        resolve();
      };
      const timer = setTimeout(done, ms);
      set.add(done);
    });
  }
}
