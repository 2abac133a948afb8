/**
 * CPU and memory of local processes from /proc (Linux): what a bench reports as a process's cost.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

const TICKS = 100; // USER_HZ on Linux

/** User + system CPU seconds from a /proc/<pid>/stat or /proc/<pid>/task/<tid>/stat file. */
function statCpuSeconds(file: string): number {
  const stat = readFileSync(file, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / TICKS;
}

/** CPU seconds (user + system) a process has used so far; NaN once it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    return statCpuSeconds(`/proc/${pid}/stat`);
  } catch {
    return NaN;
  }
}

/**
 * A process's CPU seconds (user + system) so far by thread: `main` (the thread whose id is the pid),
 * the other threads summed by name (/proc/<pid>/task/<tid>/comm), and each thread called "node" also
 * as `#<pid>:<tid>` (Node names all its other threads so: a worker_threads thread, V8's helpers, libuv's
 * pool; threadSplit tells each process's busiest apart). Empty once the process is gone.
 */
export function threadCpuSeconds(pid: number): Map<string, number> {
  const out = new Map<string, number>();
  let tids: string[] = [];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    try {
      const cpu = statCpuSeconds(`/proc/${pid}/task/${tid}/stat`);
      const name = Number(tid) === pid ? 'main' : readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      out.set(name, (out.get(name) ?? 0) + cpu);
      if (name === 'node') out.set(`#${pid}:${tid}`, cpu);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/**
 * CPU seconds by thread between two threadCpuSeconds readings (of one process or summed over
 * several), largest first: each process's busiest "node" thread (in a worker: the Temporal SDK's
 * workflow thread), summed, apart from the other "node" threads.
 */
export function threadSplit(before: Map<string, number>, after: Map<string, number>): [string, number][] {
  const delta = new Map<string, number>();
  for (const [k, v] of after) delta.set(k, v - (before.get(k) ?? 0));
  const busiest = new Map<string, number>();
  for (const [k, v] of delta) {
    if (!k.startsWith('#')) continue;
    const pid = k.slice(1, k.indexOf(':'));
    busiest.set(pid, Math.max(busiest.get(pid) ?? 0, v));
  }
  const top = [...busiest.values()].reduce((a, b) => a + b, 0);
  const out: [string, number][] = [];
  for (const [k, v] of delta) {
    if (k.startsWith('#')) continue;
    if (k === 'node') out.push(['busiest node thread', top], ['other node threads', v - top]);
    else out.push([k, v]);
  }
  return out.sort((a, b) => b[1] - a[1]);
}

/** Resident memory in MB; NaN once the process is gone. */
export function rssMb(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Pids whose command line matches `pattern` (pgrep -f), or of a user (pgrep -u). */
export function pids(opts: { pattern?: string; user?: string }): number[] {
  const args = [...(opts.user ? ['-u', opts.user] : []), ...(opts.pattern ? ['-f', opts.pattern] : [])];
  try {
    return execFileSync('pgrep', args, { encoding: 'utf8' })
      .split('\n')
      .filter(Boolean)
      .map(Number)
      .filter((p) => p !== process.pid);
  } catch {
    return [];
  }
}

/** The machine's busy CPU seconds (all cores) so far, from /proc/stat. */
export function machineBusySeconds(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + (f[4] ?? 0);
  return (f.reduce((a, b) => a + b, 0) - idle) / TICKS;
}

/**
 * A group of processes watched together: CPU seconds used between start() and read(), and the
 * peak of their summed RSS, sampled every second (the pid list is re-read each time, so
 * PostgreSQL backends that come and go are counted).
 */
export class ProcGroup {
  private base = new Map<number, number>();
  private gone = 0;
  private last = new Map<number, number>();
  peakRssMb = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    readonly name: string,
    private readonly find: () => number[],
  ) {}

  start(): this {
    this.base.clear();
    this.last.clear();
    this.gone = 0;
    this.peakRssMb = 0;
    for (const p of this.find()) this.base.set(p, cpuSeconds(p));
    this.sample();
    this.timer = setInterval(() => this.sample(), 1000);
    this.timer.unref();
    return this;
  }

  private sample(): void {
    const now = this.find();
    let rss = 0;
    for (const p of now) {
      const c = cpuSeconds(p);
      if (Number.isNaN(c)) continue;
      if (!this.base.has(p)) this.base.set(p, 0); // started during the window: all of its CPU counts
      this.last.set(p, c);
      rss += rssMb(p) || 0;
    }
    for (const [p, c] of this.last)
      if (!now.includes(p)) {
        this.gone += c - (this.base.get(p) ?? 0);
        this.last.delete(p);
        this.base.delete(p);
      }
    this.peakRssMb = Math.max(this.peakRssMb, rss);
  }

  /** CPU seconds used since start(). */
  cpu(): number {
    this.sample();
    let s = this.gone;
    for (const [p, c] of this.last) s += c - (this.base.get(p) ?? 0);
    return s;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
