/**
 * The one live connection of the console: `GET /api/v1/events` (Server-Sent Events, bearer
 * token). Reconnects by itself with capped backoff; the library sends the last event id back as
 * `Last-Event-ID` so the gateway catches up. After `resync` or a reconnect, listeners of
 * `refetch` reload what they show. Never polls.
 */
import { fetchEventSource } from '@microsoft/fetch-event-source';
import { useSyncExternalStore } from 'react';
import { getToken, signOut } from './client';

export type LiveStatus = 'connected' | 'reconnecting' | 'off';
export type LiveKind = 'session' | 'agent' | 'refetch';
type Listener = (data: unknown) => void;

const MIN_BACKOFF_MS = 1000;
const MAX_BACKOFF_MS = 30_000;
/** A stream open this long was healthy: its loss is retried at once. */
const STABLE_MS = 10_000;

class Unauthorized extends Error {}

class LiveConnection {
  private listeners = new Map<LiveKind, Set<Listener>>();
  private statusListeners = new Set<() => void>();
  private controller: AbortController | null = null;
  private backoff = MIN_BACKOFF_MS;
  private opened = false;
  private openedAt = 0;
  status: LiveStatus = 'off';

  start(): void {
    if (this.controller) return;
    const controller = new AbortController();
    this.controller = controller;
    this.opened = false;
    this.backoff = MIN_BACKOFF_MS;
    this.setStatus('reconnecting');
    void fetchEventSource('/api/v1/events', {
      signal: controller.signal,
      openWhenHidden: true,
      // The token is read per (re)connection: a changed password's fresh token is used next time.
      fetch: (input, init) =>
        window.fetch(input, { ...init, headers: { ...(init?.headers as Record<string, string>), Authorization: `Bearer ${getToken() ?? ''}` } }),
      onopen: async (res) => {
        if (res.status === 401) throw new Unauthorized();
        const type = res.headers.get('content-type') ?? '';
        if (!res.ok || !type.startsWith('text/event-stream')) throw new Error(`events: HTTP ${res.status}`);
        const reconnect = this.opened;
        this.opened = true;
        this.openedAt = Date.now();
        this.setStatus('connected');
        // Whatever happened while the stream was down is caught up by Last-Event-ID; a refetch
        // also covers a gateway that restarted and lost its buffer.
        if (reconnect) this.emit('refetch', { reason: 'reconnect' });
      },
      onmessage: (msg) => {
        if (msg.event === 'resync') return this.emit('refetch', { reason: 'resync' });
        if (msg.event !== 'session' && msg.event !== 'agent') return;
        let data: unknown;
        try {
          data = JSON.parse(msg.data);
        } catch {
          return;
        }
        this.emit(msg.event, data);
      },
      onclose: () => {
        // The server ended the stream (a restart, a proxy): reconnect.
        throw new Error('events: stream closed');
      },
      onerror: (err) => {
        if (err instanceof Unauthorized) {
          this.stop();
          signOut();
          throw err; // stops the library's retry loop; we are signed out
        }
        if (controller.signal.aborted) throw err;
        this.setStatus('reconnecting');
        // Back to a quick retry only after a stream that lived: one that closes at once (a broken
        // proxy) backs off instead of turning into a reconnect-and-refetch loop.
        if (this.openedAt && Date.now() - this.openedAt > STABLE_MS) this.backoff = MIN_BACKOFF_MS;
        this.openedAt = 0;
        const delay = this.backoff + Math.random() * 250;
        this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
        return delay;
      },
    }).catch(() => {
      // stopped (sign out): nothing to do
    });
  }

  stop(): void {
    this.controller?.abort();
    this.controller = null;
    this.setStatus('off');
  }

  subscribe(kind: LiveKind, fn: Listener): () => void {
    let set = this.listeners.get(kind);
    if (!set) this.listeners.set(kind, (set = new Set()));
    set.add(fn);
    return () => set!.delete(fn);
  }

  onStatus(fn: () => void): () => void {
    this.statusListeners.add(fn);
    return () => this.statusListeners.delete(fn);
  }

  private emit(kind: LiveKind, data: unknown): void {
    for (const fn of [...(this.listeners.get(kind) ?? [])]) {
      try {
        fn(data);
      } catch (err) {
        console.error('live listener failed', err);
      }
    }
  }

  private setStatus(s: LiveStatus): void {
    if (s === this.status) return;
    this.status = s;
    for (const fn of [...this.statusListeners]) fn();
  }
}

export const live = new LiveConnection();

export function useLiveStatus(): LiveStatus {
  return useSyncExternalStore(
    (fn) => live.onStatus(fn),
    () => live.status,
  );
}
