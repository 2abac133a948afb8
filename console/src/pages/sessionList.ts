/**
 * The session list's data: pages of 100 fetched server-side (search, filters, sort), cursor by
 * cursor, upserted in place by live `session` events.
 */
import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { api, callFull, errorMessage, isAbort } from '../api/client';
import { live } from '../api/live';
import type { paths } from '../api/openapi';
import type { Session, SortKey } from '../api/types';

type ListParams = NonNullable<paths['/api/v1/sessions']['get']['parameters']['query']>;

export const PAGE_SIZE = 100;

export interface ListQuery {
  q: string;
  state: string;
  platform: string;
  user: string;
  sort: SortKey;
  order: 'asc' | 'desc';
}

export interface SessionList {
  rows: Session[];
  total: number | null;
  hasMore: boolean;
  loading: boolean;
  loadingMore: boolean;
  error: string;
  newCount: number;
  loadMore(): void;
  refresh(): void;
  upsert(s: Partial<Session> & { id: string }): void;
}

function queryParams(q: ListQuery, cursor: string | null, limit: number): ListParams {
  const query: ListParams = { sort: q.sort, order: q.order, limit };
  if (q.q) query.q = q.q;
  if (q.state) query.state = q.state;
  if (q.platform) query.platform = q.platform;
  if (q.user) query.user = q.user;
  if (cursor) query.cursor = cursor;
  return query;
}

/** Whether a session we did not list belongs at the top of this list as it is sorted and filtered. */
function belongsOnTop(s: Session, q: ListQuery): 'top' | 'elsewhere' | 'no' {
  if (q.state && s.state !== q.state) return 'no';
  if (q.platform && s.platform !== q.platform) return 'no';
  if (q.user && s.user !== q.user) return 'no';
  if (s.state === 'deleted') return 'no';
  if (q.q) {
    const needle = q.q.toLowerCase();
    const hay = [s.template, s.user, s.agent_id ?? ''].map((x) => String(x).toLowerCase());
    if (!s.id.toLowerCase().startsWith(needle) && !hay.some((h) => h.includes(needle))) return 'no';
    return 'elsewhere';
  }
  return q.sort === 'created_at' && q.order === 'desc' ? 'top' : 'elsewhere';
}

export function useSessionList(q: ListQuery): SessionList {
  const [rows, setRows] = useState<Session[]>([]);
  const [total, setTotal] = useState<number | null>(null);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [loadingMore, setLoadingMore] = useState(false);
  const [error, setError] = useState('');
  const [newCount, setNewCount] = useState(0);
  const generation = useRef(0);
  const abort = useRef<AbortController | null>(null);
  const rowsRef = useRef(rows);
  rowsRef.current = rows;
  const qRef = useRef(q);
  qRef.current = q;
  // Live updates that arrive while a reload is in flight: the page it returns may have been read
  // before them (a session that went running just after the list was read), so they are applied
  // again on top of it instead of being overwritten by the older page.
  const duringReload = useRef<Map<string, Partial<Session> & { id: string }> | null>(null);
  const key = JSON.stringify(q);

  const fetchPage = useCallback(async (query: ListQuery, after: string | null, limit: number, signal: AbortSignal) => {
    const { data, response } = await callFull(api.GET('/api/v1/sessions', { params: { query: queryParams(query, after, limit) }, signal }));
    const totalHeader = response.headers.get('x-total-count');
    return {
      rows: (data ?? []) as Session[],
      total: totalHeader !== null && totalHeader !== '' ? Number(totalHeader) : null,
      next: response.headers.get('x-next-cursor') || null,
    };
  }, []);

  /** (Re)loads from the first page; `keep` rows are reloaded at once so a refetch keeps the scroll position. */
  const reload = useCallback(
    (keep: number) => {
      abort.current?.abort();
      const ctrl = new AbortController();
      abort.current = ctrl;
      const gen = ++generation.current;
      const query = qRef.current;
      duringReload.current = new Map();
      setLoading(true);
      setError('');
      fetchPage(query, null, Math.min(1000, Math.max(PAGE_SIZE, keep)), ctrl.signal)
        .then((page) => {
          if (gen !== generation.current) return;
          const seen = duringReload.current ?? new Map<string, Partial<Session> & { id: string }>();
          duringReload.current = null;
          setRows(
            page.rows.map((r) => {
              const e = seen.get(r.id);
              // (An update older than the page's own row is not applied: the page is newer.)
              return e && !(e.updated_at && r.updated_at && e.updated_at < r.updated_at) ? ({ ...r, ...e } as Session) : r;
            }),
          );
          setTotal(page.total ?? page.rows.length);
          setCursor(page.next);
          setNewCount(0);
        })
        .catch((err) => {
          if (isAbort(err) || gen !== generation.current) return;
          duringReload.current = null;
          setError(errorMessage(err));
        })
        .finally(() => {
          if (gen === generation.current) {
            setLoading(false);
            setLoadingMore(false);
          }
        });
    },
    [fetchPage],
  );

  useEffect(() => {
    setRows([]);
    setTotal(null);
    setCursor(null);
    reload(PAGE_SIZE);
    return () => abort.current?.abort();
  }, [key, reload]);

  const loadMore = useCallback(() => {
    if (!cursor || loadingMore || loading) return;
    const gen = generation.current;
    const ctrl = abort.current ?? new AbortController();
    setLoadingMore(true);
    fetchPage(qRef.current, cursor, PAGE_SIZE, ctrl.signal)
      .then((page) => {
        if (gen !== generation.current) return;
        setRows((prev) => {
          const seen = new Set(prev.map((r) => r.id));
          return prev.concat(page.rows.filter((r) => !seen.has(r.id)));
        });
        if (page.total !== null) setTotal(page.total);
        setCursor(page.next);
      })
      .catch((err) => {
        if (isAbort(err) || gen !== generation.current) return;
        setError(errorMessage(err));
      })
      .finally(() => {
        if (gen === generation.current) setLoadingMore(false);
      });
  }, [cursor, loadingMore, loading, fetchPage]);

  const upsert = useCallback((s: Partial<Session> & { id: string }) => {
    duringReload.current?.set(s.id, { ...duringReload.current.get(s.id), ...s });
    const idx = rowsRef.current.findIndex((r) => r.id === s.id);
    if (idx >= 0) {
      setRows((prev) => {
        const i = prev[idx]?.id === s.id ? idx : prev.findIndex((r) => r.id === s.id);
        if (i < 0) return prev;
        const next = prev.slice();
        next[i] = { ...prev[i], ...s } as Session;
        return next;
      });
      return;
    }
    const full = s as Session;
    if (!full.created_at || !full.state) return; // a partial update of a row we do not show
    const where = belongsOnTop(full, qRef.current);
    if (where === 'top') {
      setRows((prev) => (prev.some((r) => r.id === s.id) ? prev : [full, ...prev]));
      setTotal((t) => (t === null ? t : t + 1));
    } else if (where === 'elsewhere') setNewCount((n) => n + 1);
  }, []);

  useEffect(() => {
    const offSession = live.subscribe('session', (data) => {
      if (data && typeof data === 'object' && typeof (data as { id?: unknown }).id === 'string') upsert(data as Session);
    });
    const offRefetch = live.subscribe('refetch', () => reload(rowsRef.current.length));
    return () => {
      offSession();
      offRefetch();
    };
  }, [upsert, reload]);

  const refresh = useCallback(() => reload(PAGE_SIZE), [reload]);
  return useMemo(
    () => ({ rows, total, hasMore: !!cursor, loading, loadingMore, error, newCount, loadMore, refresh, upsert }),
    [rows, total, cursor, loading, loadingMore, error, newCount, loadMore, refresh, upsert],
  );
}
