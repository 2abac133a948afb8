/**
 * The agent's durable memory of commands, so that neither a re-delivery nor an agent restart
 * runs a command late or twice:
 *  - per session, the highest command generation the agent has acted on: anything older is stale
 *    and refused (a start that failed long ago never creates a container for a failed session);
 *  - commands the control plane abandoned (cancel_command): never started afterwards;
 *  - the outbox: results not yet acknowledged by the control plane (re-sent until result_ack).
 * An append-only JSON-lines file, replayed on start and compacted when it grows: every change is
 * one appendFileSync (written before the command acts or the result is sent).
 */
import { randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { CommandResult, CommandType } from '../../protocol/messages';

export type Outcome = { ok: true; result: CommandResult } | { ok: false; error: string; retryable: boolean };

export interface OutboxEntry {
  commandId: string;
  sessionId: string;
  type: CommandType;
  generation: number;
  outcome: Outcome;
  at: number;
}

type Entry =
  { k: 'gen'; s: string; g: number; at: number } | { k: 'abandon'; c: string; at: number } | { k: 'out'; e: OutboxEntry } | { k: 'acked'; c: string };

/** Entries older than this are forgotten at compaction (a command's deadline is minutes, not days). */
const RETAIN_MS = 7 * 24 * 3600_000;

export class CommandJournal {
  private readonly generations = new Map<string, { g: number; at: number }>();
  private readonly abandoned = new Map<string, number>();
  private readonly outbox = new Map<string, OutboxEntry>();
  private lines = 0;

  constructor(readonly file: string | null) {
    if (!file) return;
    mkdirSync(path.dirname(file), { recursive: true });
    if (existsSync(file)) {
      for (const line of readFileSync(file, 'utf8').split('\n')) {
        if (!line) continue;
        try {
          this.apply(JSON.parse(line) as Entry);
        } catch {
          // a torn last line after a crash: everything before it is intact
        }
      }
    }
    this.compact();
  }

  /** The default location: AGENT_STATE_DIR, else a per-agent directory under the OS temp dir. */
  static defaultFile(agentId: string, env: NodeJS.ProcessEnv = process.env): string {
    const dir = env.AGENT_STATE_DIR || path.join(os.tmpdir(), 'streamspace-agent', agentId);
    return path.join(dir, 'commands.jsonl');
  }

  generation(sessionId: string): number {
    return this.generations.get(sessionId)?.g ?? -1;
  }

  /** Records that the agent acts on this generation of the session (before it acts). */
  begin(sessionId: string, generation: number): void {
    if (generation <= this.generation(sessionId)) return;
    this.write({ k: 'gen', s: sessionId, g: generation, at: Date.now() });
  }

  isAbandoned(commandId: string): boolean {
    return this.abandoned.has(commandId);
  }

  abandon(commandId: string): void {
    if (!this.abandoned.has(commandId)) this.write({ k: 'abandon', c: commandId, at: Date.now() });
  }

  unacknowledged(): OutboxEntry[] {
    return [...this.outbox.values()];
  }

  result(commandId: string): OutboxEntry | undefined {
    return this.outbox.get(commandId);
  }

  /** Keeps the result until the control plane confirms its durable write. */
  remember(e: Omit<OutboxEntry, 'at'>): void {
    this.write({ k: 'out', e: { ...e, at: Date.now() } });
  }

  acknowledged(commandId: string): void {
    if (this.outbox.has(commandId)) this.write({ k: 'acked', c: commandId });
  }

  private apply(e: Entry): void {
    switch (e.k) {
      case 'gen':
        if (e.g > this.generation(e.s)) this.generations.set(e.s, { g: e.g, at: e.at });
        return;
      case 'abandon':
        this.abandoned.set(e.c, e.at);
        return;
      case 'out':
        this.outbox.set(e.e.commandId, e.e);
        return;
      case 'acked':
        this.outbox.delete(e.c);
        return;
    }
  }

  private write(e: Entry): void {
    this.apply(e);
    if (!this.file) return;
    appendFileSync(this.file, JSON.stringify(e) + '\n');
    const live = this.generations.size + this.abandoned.size + this.outbox.size;
    if (++this.lines > 1000 + 4 * live) this.compact();
  }

  /** Rewrites the file with only the live entries (atomically, by rename). */
  private compact(): void {
    if (!this.file) return;
    const horizon = Date.now() - RETAIN_MS;
    const out: string[] = [];
    for (const [s, { g, at }] of this.generations) {
      if (at < horizon) this.generations.delete(s);
      else out.push(JSON.stringify({ k: 'gen', s, g, at }));
    }
    for (const [c, at] of this.abandoned) {
      if (at < horizon) this.abandoned.delete(c);
      else out.push(JSON.stringify({ k: 'abandon', c, at }));
    }
    for (const e of this.outbox.values()) out.push(JSON.stringify({ k: 'out', e }));
    // A name of this process's own: replicas of one agent on one host share the file (AGENT_STATE_DIR
    // or the default), and two of them starting at once both compact it. With one shared temporary
    // name, the second rename found it gone and that replica died at start (ENOENT).
    const tmp = `${this.file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
    writeFileSync(tmp, out.length ? out.join('\n') + '\n' : '');
    renameSync(tmp, this.file);
    this.lines = out.length;
  }
}
