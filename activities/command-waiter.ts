/** Lets many waiting activities share one LISTEN connection for "command finished" events. */
import { CHANNEL_COMMAND_DONE } from '../db/commands';
import type { PgListener } from '../db/listener';

export class CommandWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();

  constructor(listener: PgListener) {
    listener.on('notification', (channel: string, payload: string) => {
      if (channel !== CHANNEL_COMMAND_DONE) return;
      const set = this.waiting.get(payload);
      if (set) for (const wake of set) wake();
    });
  }

  /** Resolves when the command is reported finished, or after `ms` (callers re-check the row). */
  wait(commandId: string, ms: number): Promise<void> {
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
