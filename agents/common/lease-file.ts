/**
 * HA_BACKEND=file: the leader lease for replicas on ONE host, in a directory they all share
 * (HA_LOCK_FILE, default <AGENT_STATE_DIR>/leader.lease).
 *
 * Node has no flock(2), and a lock held by a process frozen with SIGSTOP would be a lock nobody
 * could safely break anyway. Instead the lease is a sequence of immutable versions,
 * `<HA_LOCK_FILE>.<n>` (JSON: holder, nonce, fencing_token, acquired, renewed, lease_duration_ms,
 * released). Every change — acquire, renew, release — writes version n+1 by hard-linking a fully
 * written temporary file to that name: link(2) creates it atomically or fails with EEXIST, so it is
 * a compare-and-swap on n — of two processes that read version n, exactly one writes n+1, and a
 * process that resumes after a freeze cannot overwrite what others wrote meanwhile (it also checks
 * that no higher version exists after its write). The highest version is the lease.
 *
 * Expiry is judged like the Kubernetes Lease: a follower takes the lease over only LEASE_DURATION
 * after it *saw* the current version appear (monotonic clock of that process; no clock need agree),
 * and a leader stops acting RENEW_DEADLINE after it started its last successful renew. The fencing
 * token grows by one on every acquisition (floored at the wall clock in ms, so deleting the
 * directory never makes it smaller). `<HA_LOCK_FILE>` itself is a human-readable copy of the current
 * version, never read for decisions. Old versions are removed as new ones are written.
 *
 * Guarantees: correct for processes on one host sharing a local file system (link(2) and rename(2)
 * are atomic there). Not for NFS or other network file systems, and not across hosts: use
 * HA_BACKEND=redis.
 */
import {
  closeSync,
  fsyncSync,
  linkSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  unlinkSync,
  watch,
  writeSync,
  type FSWatcher,
} from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../config/log';
import { Candidate, LeaseAttempt, LeaseBackend, now } from './ha';

interface LeaseRecord {
  holder: string | null;
  nonce: string | null;
  fencing_token: number;
  acquired: string | null;
  renewed: string;
  lease_duration_ms: number;
  released?: boolean;
}

/** Versions kept behind the current one (a slow reader may still be reading one). */
const KEEP = 8;

export class FileLease implements LeaseBackend {
  readonly label = 'file';
  readonly where: string;
  private readonly dir: string;
  private readonly base: string;
  private watcher: FSWatcher | null = null;
  /** The version we saw last and when it appeared to us (monotonic). */
  private observed: { version: number; at: number } = { version: -1, at: 0 };
  private mineToken = 0;

  constructor(
    private readonly file: string,
    private readonly me: Candidate,
    private readonly leaseDurationMs: number,
    private readonly log: Logger,
  ) {
    this.where = file;
    this.dir = path.dirname(file);
    this.base = path.basename(file);
    mkdirSync(this.dir, { recursive: true });
  }

  private versionOf(name: string): number | null {
    if (!name.startsWith(this.base + '.')) return null;
    const rest = name.slice(this.base.length + 1);
    return /^\d{1,15}$/.test(rest) ? Number(rest) : null;
  }

  private versionFile(n: number): string {
    return path.join(this.dir, `${this.base}.${String(n).padStart(15, '0')}`);
  }

  private versions(): number[] {
    return readdirSync(this.dir)
      .map((n) => this.versionOf(n))
      .filter((v): v is number => v !== null)
      .sort((a, b) => a - b);
  }

  /** The highest version and its record (retries when a version is removed under it). */
  private current(): { version: number; record: LeaseRecord | null } {
    for (let i = 0; ; i++) {
      const vs = this.versions();
      const version = vs.length ? vs[vs.length - 1] : 0;
      if (!vs.length) return { version, record: null };
      try {
        return { version, record: JSON.parse(readFileSync(this.versionFile(version), 'utf8')) as LeaseRecord };
      } catch (err) {
        if (i >= 5) throw err;
      }
    }
  }

  /** Writes version n atomically (link of a complete temporary file); false if it exists or a newer one does. */
  private write(n: number, record: LeaseRecord): boolean {
    const tmp = path.join(this.dir, `${this.base}.tmp-${this.me.nonce}`);
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, JSON.stringify(record));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    const target = this.versionFile(n);
    try {
      linkSync(tmp, target);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    } finally {
      unlinkSync(tmp);
    }
    const vs = this.versions();
    if (vs[vs.length - 1] !== n) {
      // A stale writer (frozen, or its version was collected): the lease moved on without us.
      try {
        unlinkSync(target);
      } catch {
        // gone already
      }
      return false;
    }
    for (const v of vs) if (v <= n - KEEP) this.unlinkQuietly(this.versionFile(v));
    // The human-readable copy (informational only).
    try {
      const copy = `${this.file}.tmp-copy-${this.me.nonce}`;
      const text = JSON.stringify({ ...record, version: n }, null, 1) + '\n';
      const cfd = openSync(copy, 'w', 0o644);
      writeSync(cfd, text);
      closeSync(cfd);
      renameSync(copy, this.file);
    } catch {
      // informational
    }
    return true;
  }

  private unlinkQuietly(f: string): void {
    try {
      unlinkSync(f);
    } catch {
      // another process collected it
    }
  }

  async acquireOrRenew(leading: boolean, signal: AbortSignal): Promise<LeaseAttempt> {
    if (signal.aborted) throw signal.reason;
    const { version, record } = this.current();
    if (version !== this.observed.version) this.observed = { version, at: now() };
    const notOurs = (): LeaseAttempt => ({ ok: false, holder: record && !record.released ? record.holder : null, holderNonce: record?.nonce ?? null });
    const stamp = new Date().toISOString();
    if (leading) {
      if (!record || record.released || record.nonce !== this.me.nonce) return notOurs();
      const ok = this.write(version + 1, { ...record, renewed: stamp, lease_duration_ms: this.leaseDurationMs });
      return ok ? { ok: true, fencingToken: this.mineToken } : this.reread();
    }
    // A version we wrote ourselves but do not lead under (a renew that did not count) is treated as
    // anyone's: it expires by observation.
    const free = !record || record.released || now() > this.observed.at + (record.lease_duration_ms || this.leaseDurationMs);
    if (!free) return notOurs();
    const token = Math.max((record?.fencing_token ?? 0) + 1, Date.now());
    const ok = this.write(version + 1, {
      holder: this.me.identity,
      nonce: this.me.nonce,
      fencing_token: token,
      acquired: stamp,
      renewed: stamp,
      lease_duration_ms: this.leaseDurationMs,
    });
    if (!ok) return this.reread();
    this.mineToken = token;
    return { ok: true, fencingToken: token };
  }

  private reread(): LeaseAttempt {
    const { version, record } = this.current();
    if (version !== this.observed.version) this.observed = { version, at: now() };
    return { ok: false, holder: record && !record.released ? record.holder : null, holderNonce: record?.nonce ?? null };
  }

  async release(signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) throw signal.reason;
    for (let i = 0; i < 3; i++) {
      const { version, record } = this.current();
      if (!record || record.released || record.nonce !== this.me.nonce) return false;
      if (this.write(version + 1, { ...record, holder: null, nonce: null, released: true, renewed: new Date().toISOString() })) return true;
    }
    return false;
  }

  watch(onChange: () => void): void {
    try {
      this.watcher = watch(this.dir, (_event, name) => {
        if (name && this.versionOf(name.toString()) !== null) onChange();
      });
      this.watcher.on('error', (err) => this.log.debug('lease directory watch failed (polling only)', { error: err.message }));
    } catch (err) {
      this.log.warn('cannot watch the lease directory (polling only)', { error: (err as Error).message });
    }
  }

  async close(): Promise<void> {
    this.watcher?.close();
  }
}
