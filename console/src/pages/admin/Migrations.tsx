import Alert from '@mui/material/Alert';
import AlertTitle from '@mui/material/AlertTitle';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Chip, { type ChipProps } from '@mui/material/Chip';
import DialogContentText from '@mui/material/DialogContentText';
import LinearProgress from '@mui/material/LinearProgress';
import Link from '@mui/material/Link';
import Paper from '@mui/material/Paper';
import Step from '@mui/material/Step';
import StepContent from '@mui/material/StepContent';
import StepLabel from '@mui/material/StepLabel';
import Stepper from '@mui/material/Stepper';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import Typography from '@mui/material/Typography';
import useMediaQuery from '@mui/material/useMediaQuery';
import { useTheme } from '@mui/material/styles';
import DownloadIcon from '@mui/icons-material/Download';
import OpenInNewIcon from '@mui/icons-material/OpenInNew';
import { useCallback, useEffect, useState } from 'react';
import { Link as RouterLink } from 'wouter';
import { api, authHeaders, call, errorMessage } from '../../api/client';
import type { MigrationProgressContract, MigrationRun } from '../../api/types';
import { ConfirmDialog, ErrorText, PageHeader, RelTime } from '../../components/common';
import { useNotify } from '../../components/notify';

const STATUS_COLOURS: Record<string, ChipProps['color']> = {
  running: 'info',
  'awaiting-approval': 'warning',
  blocked: 'error',
  'waiting-to-decommission': 'info',
  'rolling-back': 'warning',
  'rolled-back': 'default',
  completed: 'success',
  aborted: 'default',
  planned: 'default',
  failed: 'error',
  done: 'success',
  pending: 'default',
  skipped: 'default',
  compensated: 'secondary',
};

function StatusChip({ status }: { status: string }) {
  const color = STATUS_COLOURS[status] ?? 'default';
  return <Chip size="small" label={status} color={color} variant={color === 'default' ? 'outlined' : 'filled'} data-testid="run-status" />;
}

function TemporalLink({ href }: { href: string | null | undefined }) {
  if (!href) return null;
  return (
    <Link href={href} target="_blank" rel="noopener noreferrer" sx={{ display: 'inline-flex', alignItems: 'center', gap: 0.5 }} data-testid="temporal-link">
      Open in Temporal UI <OpenInNewIcon fontSize="inherit" aria-hidden />
    </Link>
  );
}

export function MigrationsPage() {
  const [runs, setRuns] = useState<MigrationRun[] | null>(null);
  const [error, setError] = useState('');
  useEffect(() => {
    call(api.GET('/api/v1/migrations'))
      .then((r) => setRuns((r ?? []) as MigrationRun[]))
      .catch((err) => setError(errorMessage(err)));
  }, []);
  return (
    <Box>
      <PageHeader title="Migrations" />
      {error && <ErrorText>{error}</ErrorText>}
      <Paper variant="outlined">
        {!runs && !error && <LinearProgress aria-label="Loading migration runs" />}
        <TableContainer tabIndex={0}>
          <Table size="small" sx={{ minWidth: 720 }} aria-label="Migration runs">
            <TableHead>
              <TableRow>
                <TableCell>Run</TableCell>
                <TableCell>Status</TableCell>
                <TableCell>Phase</TableCell>
                <TableCell>Started</TableCell>
                <TableCell>Closed</TableCell>
                <TableCell>Temporal</TableCell>
              </TableRow>
            </TableHead>
            <TableBody>
              {(runs ?? []).map((r) => (
                <TableRow key={r.run_id} hover data-testid="run-row" data-run-id={r.run_id}>
                  <TableCell>
                    <Link component={RouterLink} href={`/admin/migrations/${encodeURIComponent(r.run_id)}`} sx={{ fontFamily: 'monospace' }}>
                      {r.run_id}
                    </Link>
                  </TableCell>
                  <TableCell>
                    <StatusChip status={r.status} />
                  </TableCell>
                  <TableCell>{r.phase ?? '—'}</TableCell>
                  <TableCell>
                    <RelTime value={r.started_at ?? null} />
                  </TableCell>
                  <TableCell>
                    <RelTime value={r.closed_at ?? null} />
                  </TableCell>
                  <TableCell>
                    <TemporalLink href={r.temporal_url} />
                  </TableCell>
                </TableRow>
              ))}
              {runs && !runs.length && (
                <TableRow>
                  <TableCell colSpan={6}>No migration run yet (npm run migration -- start).</TableCell>
                </TableRow>
              )}
            </TableBody>
          </Table>
        </TableContainer>
      </Paper>
    </Box>
  );
}

const TERMINAL = new Set(['completed', 'aborted', 'rolled-back']);

export function MigrationRunPage({ runId }: { runId: string }) {
  const theme = useTheme();
  const narrow = useMediaQuery(theme.breakpoints.down('md'), { noSsr: true });
  const notify = useNotify();
  const [run, setRun] = useState<MigrationProgressContract | null>(null);
  const [error, setError] = useState('');
  const [approve, setApprove] = useState(false);
  const [rollback, setRollback] = useState(false);
  const [busy, setBusy] = useState(false);

  const load = useCallback(() => {
    call(api.GET('/api/v1/migrations/{runId}', { params: { path: { runId } } }))
      .then((r) => {
        setRun(r as unknown as MigrationProgressContract);
        setError('');
      })
      .catch((err) => setError(errorMessage(err)));
  }, [runId]);

  const status = run?.status;
  useEffect(() => {
    load();
    if (status && TERMINAL.has(status)) return;
    // A run is not a session: refreshing it every 2 s while it is open is fine.
    const t = window.setInterval(load, 2000);
    return () => window.clearInterval(t);
  }, [load, status]);

  async function signal(name: 'approve' | 'rollback' | 'retry' | 'abort', body: { cohort?: string; reason?: string }) {
    setBusy(true);
    try {
      const path = { params: { path: { runId } }, body };
      const r =
        name === 'approve'
          ? await call(api.POST('/api/v1/migrations/{runId}/approve', path))
          : name === 'rollback'
            ? await call(api.POST('/api/v1/migrations/{runId}/rollback', path))
            : name === 'retry'
              ? await call(api.POST('/api/v1/migrations/{runId}/retry', path))
              : await call(api.POST('/api/v1/migrations/{runId}/abort', path));
      if (r && typeof r === 'object' && 'status' in (r as object)) setRun(r as unknown as MigrationProgressContract);
      else load();
      notify(`${name} sent`, 'success');
    } catch (err) {
      notify(`${name} failed: ${errorMessage(err)}`, 'error');
    } finally {
      setBusy(false);
    }
  }

  async function downloadCsv() {
    try {
      const res = await fetch(`/api/v1/migrations/${encodeURIComponent(runId)}/failures.csv`, { headers: authHeaders() });
      if (!res.ok) throw new Error(errorMessage(await res.json().catch(() => null), res.status));
      const blob = await res.blob();
      const url = URL.createObjectURL(blob);
      const a = document.createElement('a');
      a.href = url;
      a.download = `${runId}-failures.csv`;
      document.body.appendChild(a);
      a.click();
      a.remove();
      window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      notify(`Download failed: ${errorMessage(err)}`, 'error');
    }
  }

  const phases = run?.phases ?? [];
  const activeStep = Math.max(
    0,
    phases.findIndex((p) => p.status === 'running' || p.status === 'failed'),
  );
  const imp = run?.import;
  const total = Number(imp?.total ?? 0);
  const done = Number(imp?.processed ?? 0);
  const pct = total > 0 ? Math.min(100, (done / total) * 100) : 0;
  const failures = imp?.failures ?? [];
  const canRollBack = !!run && !TERMINAL.has(run.status) && run.status !== 'rolling-back';

  return (
    <Box>
      <PageHeader title={`Migration ${runId}`}>
        {run && <StatusChip status={run.status} />}
        <TemporalLink href={run?.temporal_url} />
      </PageHeader>
      <Box sx={{ mb: 2 }}>
        <Link component={RouterLink} href="/admin/migrations">
          ← All runs
        </Link>
      </Box>
      {error && <ErrorText>{error}</ErrorText>}
      {!run && !error && <LinearProgress aria-label="Loading the run" />}
      {run && (
        <Box sx={{ display: 'grid', gap: 2 }}>
          {run.awaitingApproval && (
            <Alert
              severity="warning"
              data-testid="awaiting-approval"
              action={
                <Button color="inherit" variant="outlined" size="small" onClick={() => setApprove(true)} disabled={busy} data-testid="approve">
                  Approve {run.awaitingApproval}
                </Button>
              }
            >
              <AlertTitle>Waiting for approval</AlertTitle>
              The run waits for your approval of <strong>{run.awaitingApproval}</strong> before it goes on.
            </Alert>
          )}
          {run.status === 'blocked' && (
            <Alert
              severity="error"
              action={
                <Button color="inherit" variant="outlined" size="small" onClick={() => void signal('retry', {})} disabled={busy} data-testid="retry">
                  Retry
                </Button>
              }
            >
              <AlertTitle>Blocked</AlertTitle>
              {run.blockedReason ?? 'A phase failed.'}
            </Alert>
          )}

          <Paper variant="outlined" sx={{ p: 2 }}>
            <Typography variant="h6" component="h2" sx={{ mb: 1 }}>
              Phases
            </Typography>
            {phases.length ? (
              <Stepper activeStep={activeStep} orientation={narrow ? 'vertical' : 'horizontal'} alternativeLabel={!narrow} data-testid="phase-timeline">
                {phases.map((p) => (
                  <Step key={p.name} completed={p.status === 'done' || p.status === 'skipped'} active={p.status === 'running'}>
                    <StepLabel
                      error={p.status === 'failed'}
                      optional={
                        <Typography variant="caption" color={p.status === 'failed' ? 'error' : 'text.secondary'}>
                          {p.status}
                        </Typography>
                      }
                    >
                      {p.name}
                    </StepLabel>
                    {narrow && p.detail && (
                      <StepContent>
                        <Typography variant="body2">{p.detail}</Typography>
                      </StepContent>
                    )}
                  </Step>
                ))}
              </Stepper>
            ) : (
              <Typography color="text.secondary">No phase has started.</Typography>
            )}
            {!narrow && phases.find((p) => p.status === 'running' || p.status === 'failed')?.detail && (
              <Typography variant="body2" sx={{ mt: 2 }}>
                {phases.find((p) => p.status === 'running' || p.status === 'failed')?.detail}
              </Typography>
            )}
          </Paper>

          <Paper variant="outlined" sx={{ p: 2 }}>
            <Typography variant="h6" component="h2" sx={{ mb: 1 }}>
              Import
            </Typography>
            <Box sx={{ display: 'flex', alignItems: 'center', gap: 2 }}>
              <LinearProgress
                variant="determinate"
                value={pct}
                sx={{ flexGrow: 1, height: 10, borderRadius: 5 }}
                aria-label={`Import progress: ${done} of ${total}`}
                data-testid="import-progress"
              />
              <Typography variant="body2" sx={{ whiteSpace: 'nowrap' }}>
                {done} / {total}
              </Typography>
            </Box>
            <Typography variant="body2" color="text.secondary" sx={{ mt: 1 }}>
              {Number(imp?.imported ?? 0)} imported, {Number(imp?.failed ?? 0)} failed
            </Typography>
          </Paper>

          <Paper variant="outlined" sx={{ p: 2 }}>
            <Box sx={{ display: 'flex', alignItems: 'center', flexWrap: 'wrap', gap: 1, mb: 1 }}>
              <Typography variant="h6" component="h2" sx={{ flexGrow: 1 }}>
                Failures ({Number(imp?.failed ?? failures.length)})
              </Typography>
              <Button startIcon={<DownloadIcon />} onClick={downloadCsv} data-testid="download-failures">
                Download failures (CSV)
              </Button>
            </Box>
            <TableContainer tabIndex={0} sx={{ maxHeight: 400 }}>
              <Table size="small" stickyHeader sx={{ minWidth: 600 }} aria-label="Import failures">
                <TableHead>
                  <TableRow>
                    <TableCell>Kind</TableCell>
                    <TableCell>Id</TableCell>
                    <TableCell>Namespace</TableCell>
                    <TableCell>Reason</TableCell>
                  </TableRow>
                </TableHead>
                <TableBody>
                  {failures.map((f, i) => (
                    <TableRow key={`${f.kind}-${f.id}-${i}`}>
                      <TableCell>{f.kind}</TableCell>
                      <TableCell sx={{ fontFamily: 'monospace' }}>{f.id}</TableCell>
                      <TableCell>{f.namespace ?? '—'}</TableCell>
                      <TableCell>{f.reason}</TableCell>
                    </TableRow>
                  ))}
                  {!failures.length && (
                    <TableRow>
                      <TableCell colSpan={4}>No failures.</TableCell>
                    </TableRow>
                  )}
                </TableBody>
              </Table>
            </TableContainer>
          </Paper>

          {run.rollback && run.rollback.length > 0 && (
            <Paper variant="outlined" sx={{ p: 2 }}>
              <Typography variant="h6" component="h2" sx={{ mb: 1 }}>
                Rollback steps
              </Typography>
              <Box component="ol" sx={{ m: 0, pl: 3 }}>
                {run.rollback.map((s, i) => (
                  <li key={i}>
                    <Typography variant="body2">
                      {s.step}: <StatusChip status={s.status} /> {s.detail ?? ''}
                    </Typography>
                  </li>
                ))}
              </Box>
            </Paper>
          )}

          <Paper variant="outlined" sx={{ p: 2, borderColor: 'error.main' }}>
            <Typography variant="h6" component="h2">
              Roll back
            </Typography>
            <Typography variant="body2" sx={{ my: 1 }}>
              Undo everything this run has done so far, newest first, and send users back to v1.
            </Typography>
            <Button color="error" variant="outlined" onClick={() => setRollback(true)} disabled={!canRollBack || busy} data-testid="rollback">
              Roll back
            </Button>
          </Paper>
        </Box>
      )}

      <ConfirmDialog
        open={approve}
        title={`Approve ${run?.awaitingApproval ?? ''}?`}
        confirmLabel={`Approve ${run?.awaitingApproval ?? ''}`}
        onClose={() => setApprove(false)}
        onConfirm={() => {
          setApprove(false);
          const cohort = run?.awaitingApproval ?? undefined;
          void signal('approve', cohort && /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(cohort) ? { cohort } : {});
        }}
      >
        The run moves on to {run?.awaitingApproval}: its users&apos; sessions are moved to v2.
      </ConfirmDialog>
      <ConfirmDialog
        open={rollback}
        title="Roll back this migration?"
        confirmLabel="Roll back"
        danger
        typeToConfirm={runId}
        onClose={() => setRollback(false)}
        onConfirm={() => {
          setRollback(false);
          void signal('rollback', { reason: 'rolled back from the console' });
        }}
      >
        <DialogContentText component="div">
          A rollback undoes the run&apos;s steps newest first: sessions moved to v2 go back to v1, v2&apos;s deployments are scaled down, v1 is scaled up again
          and v2&apos;s additive database changes are undone. Users with sessions on v2 are interrupted while they move back. It cannot be cancelled once
          started.
        </DialogContentText>
      </ConfirmDialog>
    </Box>
  );
}
