import { useEffect, useState } from 'react';

const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto', style: 'short' });
const abs = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
const UNITS: Array<[Intl.RelativeTimeFormatUnit, number]> = [
  ['year', 365 * 86400],
  ['month', 30 * 86400],
  ['week', 7 * 86400],
  ['day', 86400],
  ['hour', 3600],
  ['minute', 60],
  ['second', 1],
];

export function toDate(v: string | number | Date | null | undefined): Date | null {
  if (v === null || v === undefined || v === '') return null;
  const d = v instanceof Date ? v : new Date(v);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** "3 min ago" */
export function relative(v: string | number | Date | null | undefined, now = Date.now()): string {
  const d = toDate(v);
  if (!d) return '—';
  const s = Math.round((d.getTime() - now) / 1000);
  if (Math.abs(s) < 10) return 'just now';
  for (const [unit, secs] of UNITS) if (Math.abs(s) >= secs || unit === 'second') return rtf.format(Math.trunc(s / secs), unit);
  return rtf.format(s, 'second');
}

export function absolute(v: string | number | Date | null | undefined): string {
  const d = toDate(v);
  return d ? abs.format(d) : '';
}

/** "1h 02m 05s" style age for heartbeats counting up. */
export function shortAge(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '—';
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

// One ticker per period for the whole app.
const tickers = new Map<number, { now: number; subs: Set<(n: number) => void>; timer: number }>();
export function useNow(periodMs = 30_000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    let t = tickers.get(periodMs);
    if (!t) {
      const entry = { now: Date.now(), subs: new Set<(n: number) => void>(), timer: 0 };
      entry.timer = window.setInterval(() => {
        entry.now = Date.now();
        for (const fn of entry.subs) fn(entry.now);
      }, periodMs);
      tickers.set(periodMs, entry);
      t = entry;
    }
    const entry = t;
    entry.subs.add(setNow);
    return () => {
      entry.subs.delete(setNow);
      if (!entry.subs.size) {
        window.clearInterval(entry.timer);
        tickers.delete(periodMs);
      }
    };
  }, [periodMs]);
  return now;
}

export function useDebounced<T>(value: T, ms: number): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = window.setTimeout(() => setV(value), ms);
    return () => window.clearTimeout(t);
  }, [value, ms]);
  return v;
}
