import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Checkbox from '@mui/material/Checkbox';
import Chip from '@mui/material/Chip';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import IconButton from '@mui/material/IconButton';
import InputAdornment from '@mui/material/InputAdornment';
import LinearProgress from '@mui/material/LinearProgress';
import MenuItem from '@mui/material/MenuItem';
import Paper from '@mui/material/Paper';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TableSortLabel from '@mui/material/TableSortLabel';
import TextField from '@mui/material/TextField';
import Toolbar from '@mui/material/Toolbar';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import useMediaQuery from '@mui/material/useMediaQuery';
import { alpha, useTheme } from '@mui/material/styles';
import AddIcon from '@mui/icons-material/Add';
import BedtimeIcon from '@mui/icons-material/Bedtime';
import OpenInNewIcon from '@mui/icons-material/OpenInNew';
import PlayArrowIcon from '@mui/icons-material/PlayArrow';
import RefreshIcon from '@mui/icons-material/Refresh';
import ReplayIcon from '@mui/icons-material/Replay';
import SearchIcon from '@mui/icons-material/Search';
import StopIcon from '@mui/icons-material/Stop';
import { useVirtualizer } from '@tanstack/react-virtual';
import { memo, useCallback, useEffect, useMemo, useRef, useState, type ReactNode } from 'react';
import { Link as RouterLink, useSearch } from 'wouter';
import { api, call, callFull, errorMessage } from '../api/client';
import type { BulkAction, BulkResult, Session, SortKey } from '../api/types';
import { useAuth } from '../auth';
import { ConfirmDialog, ErrorText, PageHeader, Reason, RelTime, StateChip } from '../components/common';
import { useNotify } from '../components/notify';
import { plainReason } from '../reasons';
import { absolute, relative, useDebounced, useNow } from '../time';
import { useSessionList, type ListQuery } from './sessionList';

const ROW_HEIGHT = 64;
const STATES = ['pending', 'running', 'hibernated', 'terminating', 'terminated', 'failed'];
const PLATFORMS = ['docker', 'kubernetes'];
type Op = 'hibernate' | 'wake' | 'stop' | 'retry';

interface Column {
  key: string;
  label: string;
  sort?: SortKey;
  width: string;
  render(s: Session): ReactNode;
}

export function SessionsPage({ admin }: { admin: boolean }) {
  const { me } = useAuth();
  const theme = useTheme();
  const narrow = useMediaQuery(theme.breakpoints.down('sm'), { noSsr: true });
  const notify = useNotify();
  const highlight = new URLSearchParams(useSearch()).get('highlight');

  const [q, setQ] = useState('');
  const [state, setState] = useState('');
  const [platform, setPlatform] = useState('');
  const [user, setUser] = useState('');
  const [sort, setSort] = useState<SortKey>('created_at');
  const [order, setOrder] = useState<'asc' | 'desc'>('desc');
  const dq = useDebounced(q.trim(), 300);
  const duser = useDebounced(user.trim(), 300);
  const query: ListQuery = useMemo(
    () => ({ q: dq, state, platform, user: admin ? duser : me?.role === 'admin' ? (me?.username ?? '') : '', sort, order }),
    [dq, state, platform, admin, duser, me, sort, order],
  );
  const list = useSessionList(query);

  const [busy, setBusy] = useState<Record<string, Op | undefined>>({});
  const [confirmStop, setConfirmStop] = useState<Session | null>(null);
  const [selected, setSelected] = useState<Set<string>>(new Set());
  const [bulkBusy, setBulkBusy] = useState(false);
  const [bulkConfirm, setBulkConfirm] = useState<BulkAction | null>(null);
  const [bulkReport, setBulkReport] = useState<{ action: BulkAction; results: BulkResult[] } | null>(null);
  const [reportOpen, setReportOpen] = useState(false);

  useEffect(() => setSelected(new Set()), [query]);

  const act = useCallback(
    async (s: Session, op: Op) => {
      setBusy((b) => ({ ...b, [s.id]: op }));
      try {
        const params = { path: { id: s.id } };
        const res =
          op === 'stop'
            ? await callFull(api.DELETE('/api/v1/sessions/{id}', { params: { ...params, query: { wait: 1 } } }))
            : op === 'retry'
              ? await callFull(api.POST('/api/v1/sessions/{id}/retry', { params }))
              : op === 'hibernate'
                ? await callFull(api.POST('/api/v1/sessions/{id}/hibernate', { params: { ...params, query: { wait: 1 } } }))
                : await callFull(api.POST('/api/v1/sessions/{id}/wake', { params: { ...params, query: { wait: 1 } } }));
        const data = res.data as unknown as Session | undefined;
        if (data && typeof data === 'object' && data.id) list.upsert(data);
      } catch (err) {
        notify(`${opLabel(op)} failed: ${plainReason(errorMessage(err))}`, 'error');
      } finally {
        setBusy((b) => ({ ...b, [s.id]: undefined }));
      }
    },
    [list, notify],
  );

  async function runBulk(action: BulkAction) {
    setBulkConfirm(null);
    const loaded = new Map(list.rows.map((r) => [r.id, r]));
    let ids = [...selected];
    if (action === 'retry') {
      const failed = ids.filter((id) => loaded.get(id)?.state === 'failed');
      if (failed.length) ids = failed;
    }
    if (!ids.length) return;
    setBulkBusy(true);
    const results: BulkResult[] = [];
    try {
      for (let i = 0; i < ids.length; i += 500) {
        const r = await call(api.POST('/api/v1/sessions/bulk', { body: { action, ids: ids.slice(i, i + 500) } }));
        results.push(...(((r as unknown as { results?: BulkResult[] }).results ?? []) as BulkResult[]));
      }
    } catch (err) {
      notify(`Bulk ${action} failed: ${errorMessage(err)}`, 'error');
      setBulkBusy(false);
      return;
    }
    setBulkBusy(false);
    for (const r of results) if (r.ok && r.state) list.upsert({ id: r.id, state: r.state } as Partial<Session> & { id: string });
    const ok = results.filter((r) => r.ok).length;
    const refused = results.length - ok;
    setBulkReport({ action, results });
    notify(`${ok} ok, ${refused} refused`, refused ? 'warning' : 'success', { label: 'Details', onClick: () => setReportOpen(true) });
    setSelected(new Set(results.filter((r) => !r.ok).map((r) => r.id)));
  }

  const toggleSort = (key: SortKey) => {
    if (sort === key) setOrder((o) => (o === 'asc' ? 'desc' : 'asc'));
    else {
      setSort(key);
      setOrder(key === 'created_at' || key === 'updated_at' || key === 'last_activity' ? 'desc' : 'asc');
    }
  };

  const columns: Column[] = useMemo(() => {
    const cols: Array<Column & { hideNarrow?: boolean }> = [
      {
        key: 'state',
        label: 'State',
        sort: 'state',
        width: narrow ? 'minmax(110px, 1fr)' : 'minmax(150px, 1.3fr)',
        render: (s) => <StateCell s={s} />,
      },
      {
        key: 'template',
        label: 'Template',
        sort: 'template',
        width: narrow ? 'minmax(100px, 1fr)' : 'minmax(130px, 1.2fr)',
        render: (s) => (
          <Box sx={{ minWidth: 0 }}>
            <Typography variant="body2" noWrap title={s.template}>
              {s.template}
            </Typography>
            <Typography variant="caption" color="text.secondary" noWrap sx={{ fontFamily: 'monospace', display: 'block' }} title={s.id}>
              {narrow && admin ? `${s.user} · ` : ''}
              {s.id.slice(0, 8)}
            </Typography>
          </Box>
        ),
      },
      ...(admin
        ? [
            {
              key: 'user',
              label: 'User',
              sort: 'user' as SortKey,
              width: 'minmax(90px, 0.8fr)',
              hideNarrow: true,
              render: (s: Session) => (
                <Typography variant="body2" noWrap title={s.user}>
                  {s.user}
                </Typography>
              ),
            },
          ]
        : []),
      { key: 'platform', label: 'Platform', sort: 'platform', width: '95px', hideNarrow: true, render: (s) => s.platform ?? '—' },
      {
        key: 'agent',
        label: 'Agent',
        sort: 'agent',
        width: 'minmax(90px, 0.9fr)',
        hideNarrow: true,
        render: (s) => (
          <Typography variant="body2" noWrap title={s.agent_id ?? ''}>
            {s.agent_id ?? '—'}
          </Typography>
        ),
      },
      { key: 'created_at', label: 'Age', sort: 'created_at', width: '95px', hideNarrow: true, render: (s) => <RelTime value={s.created_at} /> },
      {
        key: 'last_activity',
        label: 'Last activity',
        sort: 'last_activity',
        width: '105px',
        hideNarrow: true,
        render: (s) => (
          <>
            <RelTime value={s.last_activity ?? null} />
            <Lifetime session={s} />
          </>
        ),
      },
    ];
    return cols.filter((c) => !(narrow && c.hideNarrow));
  }, [admin, narrow]);

  const template = [admin ? '40px' : null, ...columns.map((c) => c.width), narrow ? '104px' : '190px'].filter(Boolean).join(' ');
  const minWidth = narrow ? 0 : admin ? 990 : 860;

  const allLoadedSelected = list.rows.length > 0 && list.rows.every((r) => selected.has(r.id));
  const someSelected = selected.size > 0 && !allLoadedSelected;
  const toggleAll = () => setSelected(allLoadedSelected ? new Set() : new Set(list.rows.map((r) => r.id)));
  const toggleOne = useCallback(
    (id: string) =>
      setSelected((prev) => {
        const next = new Set(prev);
        if (next.has(id)) next.delete(id);
        else next.add(id);
        return next;
      }),
    [],
  );

  const scrollRef = useRef<HTMLDivElement>(null);
  const virtualizer = useVirtualizer({
    count: list.rows.length,
    getScrollElement: () => scrollRef.current,
    estimateSize: () => ROW_HEIGHT,
    overscan: 12,
    getItemKey: (i) => list.rows[i]?.id ?? i,
  });
  const items = virtualizer.getVirtualItems();
  const lastIndex = items.length ? items[items.length - 1].index : -1;
  useEffect(() => {
    if (list.hasMore && !list.loadingMore && !list.loading && lastIndex >= list.rows.length - 25) list.loadMore();
  }, [lastIndex, list]);

  const title = admin ? 'All sessions' : 'Sessions';
  const countText = list.total === null ? '' : `${list.total} session${list.total === 1 ? '' : 's'}`;

  return (
    <Box>
      <PageHeader title={title}>
        <Typography color="text.secondary" data-testid="session-count" aria-live="polite">
          {countText}
        </Typography>
        {!admin && (
          <Button component={RouterLink} href="/catalog" variant="contained" startIcon={<AddIcon />}>
            New session
          </Button>
        )}
      </PageHeader>

      <Box role="search" sx={{ display: 'flex', flexWrap: 'wrap', gap: 1.5, mb: 1.5, alignItems: 'center' }}>
        <TextField
          label="Search"
          placeholder={admin ? 'id, template, user, agent' : 'id, template, agent'}
          size="small"
          value={q}
          onChange={(e) => setQ(e.target.value)}
          sx={{ flex: '1 1 220px', maxWidth: 360 }}
          slotProps={{
            input: {
              startAdornment: (
                <InputAdornment position="start">
                  <SearchIcon fontSize="small" />
                </InputAdornment>
              ),
            },
            htmlInput: { 'data-testid': 'session-search', type: 'search' },
          }}
        />
        <TextField select label="State" size="small" value={state} onChange={(e) => setState(e.target.value)} sx={{ minWidth: 140 }} id="filter-state">
          <MenuItem value="">All states</MenuItem>
          {STATES.map((s) => (
            <MenuItem key={s} value={s}>
              {s}
            </MenuItem>
          ))}
        </TextField>
        <TextField
          select
          label="Platform"
          size="small"
          value={platform}
          onChange={(e) => setPlatform(e.target.value)}
          sx={{ minWidth: 140 }}
          id="filter-platform"
        >
          <MenuItem value="">All platforms</MenuItem>
          {PLATFORMS.map((s) => (
            <MenuItem key={s} value={s}>
              {s}
            </MenuItem>
          ))}
        </TextField>
        {admin && (
          <TextField
            label="User"
            size="small"
            value={user}
            onChange={(e) => setUser(e.target.value)}
            sx={{ width: 160 }}
            slotProps={{ htmlInput: { 'data-testid': 'user-filter' } }}
          />
        )}
        <Tooltip title="Refresh">
          <IconButton aria-label="Refresh the list" onClick={list.refresh}>
            <RefreshIcon />
          </IconButton>
        </Tooltip>
        {list.newCount > 0 && (
          <Chip
            color="primary"
            label={`${list.newCount} new session${list.newCount === 1 ? '' : 's'} — refresh`}
            onClick={list.refresh}
            data-testid="new-sessions"
          />
        )}
      </Box>

      {admin && (
        <Paper variant="outlined" sx={{ mb: 1.5 }}>
          <Toolbar
            variant="dense"
            sx={{ gap: 1, flexWrap: 'wrap', py: 0.5, bgcolor: selected.size ? alpha(theme.palette.primary.main, 0.08) : undefined }}
            data-testid="bulk-bar"
          >
            <Typography sx={{ mr: 1 }} data-testid="bulk-count">
              {selected.size} selected
            </Typography>
            <Button size="small" variant="outlined" disabled={!selected.size || bulkBusy} onClick={() => runBulk('hibernate')} data-testid="bulk-hibernate">
              Hibernate
            </Button>
            <Button size="small" variant="outlined" disabled={!selected.size || bulkBusy} onClick={() => runBulk('wake')} data-testid="bulk-wake">
              Wake
            </Button>
            <Button
              size="small"
              variant="outlined"
              color="error"
              disabled={!selected.size || bulkBusy}
              onClick={() => setBulkConfirm('stop')}
              data-testid="bulk-stop"
            >
              Stop
            </Button>
            <Button size="small" variant="outlined" disabled={!selected.size || bulkBusy} onClick={() => runBulk('retry')} data-testid="bulk-retry">
              Retry failed
            </Button>
            <Button size="small" disabled={!selected.size || bulkBusy} onClick={() => setSelected(new Set())} data-testid="bulk-clear">
              Clear selection
            </Button>
            {bulkReport && (
              <Button size="small" onClick={() => setReportOpen(true)} data-testid="bulk-report">
                Last result
              </Button>
            )}
          </Toolbar>
          {bulkBusy && <LinearProgress aria-label="Bulk action in progress" />}
        </Paper>
      )}

      {list.error && <ErrorText>{list.error}</ErrorText>}

      <Paper variant="outlined" sx={{ overflow: 'hidden' }}>
        {list.loading && <LinearProgress aria-label="Loading sessions" />}
        <Box
          ref={scrollRef}
          sx={{
            height: { xs: admin ? 'calc(100dvh - 330px)' : 'calc(100dvh - 250px)', sm: admin ? 'calc(100vh - 290px)' : 'calc(100vh - 226px)' },
            minHeight: 320,
            overflow: 'auto',
            position: 'relative',
          }}
          tabIndex={0}
          aria-label={`${title} list`}
        >
          <Box role="table" aria-label={title} aria-rowcount={(list.total ?? list.rows.length) + 1} sx={{ minWidth }} data-testid="session-table">
            <Box role="rowgroup" sx={{ position: 'sticky', top: 0, zIndex: 2, bgcolor: 'background.paper', borderBottom: 1, borderColor: 'divider' }}>
              <Box role="row" aria-rowindex={1} sx={{ display: 'grid', gridTemplateColumns: template, alignItems: 'center', minHeight: 44, px: 1 }}>
                {admin && (
                  <Box role="columnheader">
                    <Checkbox
                      size="small"
                      checked={allLoadedSelected}
                      indeterminate={someSelected}
                      onChange={toggleAll}
                      slotProps={{ input: { 'aria-label': 'Select all loaded sessions', ...({ 'data-testid': 'select-all' } as object) } }}
                    />
                  </Box>
                )}
                {columns.map((c) => (
                  <Box
                    role="columnheader"
                    key={c.key}
                    aria-sort={c.sort && sort === c.sort ? (order === 'asc' ? 'ascending' : 'descending') : undefined}
                    sx={{ px: 1, fontWeight: 600, fontSize: 14 }}
                  >
                    {c.sort ? (
                      <TableSortLabel
                        active={sort === c.sort}
                        direction={sort === c.sort ? order : 'asc'}
                        onClick={() => toggleSort(c.sort!)}
                        data-testid={`sort-${c.sort}`}
                      >
                        {c.label}
                      </TableSortLabel>
                    ) : (
                      c.label
                    )}
                  </Box>
                ))}
                <Box role="columnheader" sx={{ px: 1, fontWeight: 600, fontSize: 14 }}>
                  Actions
                </Box>
              </Box>
            </Box>
            <Box role="rowgroup" sx={{ height: virtualizer.getTotalSize(), position: 'relative' }}>
              {items.map((vi) => {
                const s = list.rows[vi.index];
                if (!s) return null;
                return (
                  <SessionRow
                    key={s.id}
                    s={s}
                    index={vi.index}
                    top={vi.start}
                    template={template}
                    columns={columns}
                    admin={admin}
                    narrow={narrow}
                    selected={selected.has(s.id)}
                    highlighted={s.id === highlight}
                    busy={busy[s.id]}
                    onToggle={toggleOne}
                    onAct={act}
                    onStop={setConfirmStop}
                  />
                );
              })}
            </Box>
          </Box>
          {!list.loading && !list.rows.length && !list.error && (
            <Box sx={{ p: 4, textAlign: 'center' }}>
              <Typography color="text.secondary">
                {dq || state || platform || duser
                  ? 'No session matches.'
                  : admin
                    ? 'No sessions yet.'
                    : 'You have no sessions yet. Start one from the catalog.'}
              </Typography>
            </Box>
          )}
          {list.loadingMore && <LinearProgress aria-label="Loading more sessions" sx={{ position: 'sticky', bottom: 0 }} />}
        </Box>
      </Paper>

      <ConfirmDialog
        open={!!confirmStop}
        title="Stop this session?"
        confirmLabel="Stop"
        danger
        onClose={() => setConfirmStop(null)}
        onConfirm={() => {
          const s = confirmStop!;
          setConfirmStop(null);
          void act(s, 'stop');
        }}
      >
        {confirmStop
          ? `The ${confirmStop.template} desktop (${confirmStop.id.slice(0, 8)}) is shut down and removed. Unsaved work outside the persistent home is lost.`
          : ''}
      </ConfirmDialog>
      <ConfirmDialog
        open={bulkConfirm === 'stop'}
        title={`Stop ${selected.size} session${selected.size === 1 ? '' : 's'}?`}
        confirmLabel="Stop them"
        danger
        onClose={() => setBulkConfirm(null)}
        onConfirm={() => void runBulk('stop')}
      >
        The selected desktops are shut down and removed. Their users lose unsaved work outside their persistent home.
      </ConfirmDialog>
      <Dialog open={reportOpen} onClose={() => setReportOpen(false)} maxWidth="md" fullWidth data-testid="bulk-details">
        <DialogTitle>
          Bulk {bulkReport?.action}: {bulkReport?.results.filter((r) => r.ok).length ?? 0} ok, {bulkReport?.results.filter((r) => !r.ok).length ?? 0} refused
        </DialogTitle>
        <DialogContent>
          <Box sx={{ overflowX: 'auto' }}>
            <Table size="small">
              <TableHead>
                <TableRow>
                  <TableCell>Session</TableCell>
                  <TableCell>Result</TableCell>
                  <TableCell>Reason</TableCell>
                </TableRow>
              </TableHead>
              <TableBody>
                {(bulkReport?.results ?? [])
                  .slice()
                  .sort((a, b) => Number(a.ok) - Number(b.ok))
                  .map((r) => (
                    <TableRow key={r.id}>
                      <TableCell sx={{ fontFamily: 'monospace' }}>{r.id}</TableCell>
                      <TableCell>{r.ok ? `ok${r.state ? ` (${r.state})` : ''}` : `refused${r.status ? ` (${r.status})` : ''}`}</TableCell>
                      <TableCell>{r.ok ? '' : plainReason(r.error)}</TableCell>
                    </TableRow>
                  ))}
              </TableBody>
            </Table>
          </Box>
        </DialogContent>
        <DialogActions>
          <Button onClick={() => setReportOpen(false)}>Close</Button>
        </DialogActions>
      </Dialog>
    </Box>
  );
}

function opLabel(op: Op): string {
  return { hibernate: 'Hibernate', wake: 'Wake', stop: 'Stop', retry: 'Retry' }[op];
}

function StateCell({ s }: { s: Session }) {
  const transition = (s as { transition?: string | null }).transition;
  const progress = (s as { progress?: string | null }).progress;
  return (
    <Box sx={{ minWidth: 0, width: '100%' }}>
      <Box sx={{ display: 'flex', alignItems: 'center', gap: 0.5 }}>
        <StateChip state={s.state} />
        {transition && (
          <Typography variant="caption" color="text.secondary" noWrap>
            {transition}…
          </Typography>
        )}
      </Box>
      {transition ? (
        <Box sx={{ mt: 0.5 }} data-testid="session-transition">
          <LinearProgress aria-label={`${transition}${progress ? `: ${progress}` : ''}`} sx={{ height: 3, borderRadius: 2 }} />
          {progress && (
            <Typography variant="caption" color="text.secondary" noWrap component="div" title={progress}>
              {progress}
            </Typography>
          )}
        </Box>
      ) : s.state === 'failed' ? (
        <Box sx={{ mt: 0.25 }} data-testid="session-reason">
          <Reason raw={s.error} compact />
        </Box>
      ) : null}
    </Box>
  );
}

interface RowProps {
  s: Session;
  index: number;
  top: number;
  template: string;
  columns: Column[];
  admin: boolean;
  narrow: boolean;
  selected: boolean;
  highlighted: boolean;
  busy: Op | undefined;
  onToggle(id: string): void;
  onAct(s: Session, op: Op): void;
  onStop(s: Session): void;
}

const SessionRow = memo(function SessionRow({
  s,
  index,
  top,
  template,
  columns,
  admin,
  narrow,
  selected,
  highlighted,
  busy,
  onToggle,
  onAct,
  onStop,
}: RowProps) {
  const transition = (s as { transition?: string | null }).transition;
  const running = s.state === 'running';
  const settled = !transition && !busy;
  const canHibernate = running && settled;
  const canWake = s.state === 'hibernated' && settled;
  const canStop = s.state !== 'terminated' && s.state !== 'deleted' && busy !== 'stop' && transition !== 'stopping';
  const canRetry = s.state === 'failed' && !busy;
  return (
    <Box
      role="row"
      aria-rowindex={index + 2}
      aria-selected={admin ? selected : undefined}
      data-testid="session-row"
      data-session-id={s.id}
      data-state={s.state}
      sx={{
        position: 'absolute',
        top: 0,
        left: 0,
        width: '100%',
        height: ROW_HEIGHT,
        transform: `translateY(${top}px)`,
        display: 'grid',
        gridTemplateColumns: template,
        alignItems: 'center',
        px: 1,
        borderBottom: 1,
        borderColor: 'divider',
        bgcolor: highlighted ? 'rgba(29, 78, 216, 0.08)' : selected ? 'rgba(29, 78, 216, 0.05)' : undefined,
        '&:hover': { bgcolor: 'action.hover' },
        fontSize: 14,
      }}
    >
      {admin && (
        <Box role="cell">
          <Checkbox size="small" checked={selected} onChange={() => onToggle(s.id)} slotProps={{ input: { 'aria-label': `Select session ${s.id}` } }} />
        </Box>
      )}
      {columns.map((c) => (
        <Box role="cell" key={c.key} sx={{ px: 1, minWidth: 0, overflow: 'hidden' }}>
          {c.render(s)}
        </Box>
      ))}
      <Box role="cell" sx={{ px: 0.5, display: 'flex', alignItems: 'center', gap: 0.25, flexWrap: 'nowrap' }}>
        {running && narrow && (
          <IconButton
            component="a"
            href={s.url || `/vnc-viewer/${encodeURIComponent(s.id)}`}
            target="_blank"
            rel="opener"
            size="small"
            color="primary"
            aria-label={`Connect to ${s.template} (${s.id.slice(0, 8)}), opens a new tab`}
            data-testid="action-connect"
          >
            <OpenInNewIcon fontSize="small" />
          </IconButton>
        )}
        {running && !narrow && (
          <Button
            component="a"
            href={s.url || `/vnc-viewer/${encodeURIComponent(s.id)}`}
            target="_blank"
            // rel="opener": a new tab opened with an opener gets a copy of this tab's sessionStorage
            // (the token), so the viewer is already signed in. Browsers default to noopener otherwise.
            rel="opener"
            size="small"
            variant="contained"
            startIcon={<OpenInNewIcon />}
            aria-label={`Connect to ${s.template} (${s.id.slice(0, 8)}), opens a new tab`}
            data-testid="action-connect"
            sx={{ mr: 0.5, minWidth: 0 }}
          >
            Connect
          </Button>
        )}
        {canHibernate && (
          <ActionButton label="Hibernate" onClick={() => onAct(s, 'hibernate')} testid="action-hibernate">
            <BedtimeIcon fontSize="small" />
          </ActionButton>
        )}
        {(s.state === 'hibernated' || busy === 'wake') && (
          <ActionButton label="Wake" disabled={!canWake} onClick={() => onAct(s, 'wake')} testid="action-wake">
            <PlayArrowIcon fontSize="small" />
          </ActionButton>
        )}
        {canRetry && (
          <ActionButton label="Retry" onClick={() => onAct(s, 'retry')} testid="action-retry">
            <ReplayIcon fontSize="small" />
          </ActionButton>
        )}
        {s.state !== 'terminated' && s.state !== 'deleted' && (
          <ActionButton label="Stop" disabled={!canStop} onClick={() => onStop(s)} testid="action-stop">
            <StopIcon fontSize="small" />
          </ActionButton>
        )}
      </Box>
    </Box>
  );
});

function ActionButton({
  label,
  onClick,
  disabled,
  testid,
  children,
}: {
  label: string;
  onClick(): void;
  disabled?: boolean;
  testid: string;
  children: ReactNode;
}) {
  const btn = (
    <IconButton size="small" aria-label={label} onClick={onClick} disabled={disabled} data-testid={testid}>
      {children}
    </IconButton>
  );
  return disabled ? btn : <Tooltip title={label}>{btn}</Tooltip>;
}

/** Why a running session is still alive and when it will hibernate or stop (from the API's `lifetime`). */
function Lifetime({
  session,
}: {
  session: { state: string; lifetime?: { hibernates_at: string | null; stops_at: string | null; alive_because: string; idle_timeout: string } };
}) {
  const now = useNow(30_000);
  const l = session.lifetime;
  if (!l || session.state !== 'running') return null;
  const why =
    l.alive_because === 'idle_disabled'
      ? 'Idle hibernation is off for this session.'
      : l.alive_because === 'recent_input'
        ? `Kept alive by keyboard or mouse input; hibernates after ${l.idle_timeout} without input.`
        : `No input yet since it started; hibernates after ${l.idle_timeout} without input.`;
  const stop = l.stops_at ? ` Stops at ${absolute(l.stops_at)} (maximum session duration).` : '';
  const label = l.hibernates_at ? `idle → ${relative(l.hibernates_at, now)}` : l.stops_at ? `stops ${relative(l.stops_at, now)}` : 'no idle limit';
  return (
    <Tooltip title={why + stop}>
      <Typography variant="caption" color="text.secondary" noWrap sx={{ display: 'block' }} data-testid="session-lifetime">
        {label}
      </Typography>
    </Tooltip>
  );
}
