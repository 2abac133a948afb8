import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Chip from '@mui/material/Chip';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogContentText from '@mui/material/DialogContentText';
import DialogTitle from '@mui/material/DialogTitle';
import IconButton from '@mui/material/IconButton';
import LinearProgress from '@mui/material/LinearProgress';
import MenuItem from '@mui/material/MenuItem';
import Paper from '@mui/material/Paper';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import ContentCopyIcon from '@mui/icons-material/ContentCopy';
import RefreshIcon from '@mui/icons-material/Refresh';
import { useCallback, useEffect, useMemo, useState } from 'react';
import { api, call, errorMessage } from '../../api/client';
import { live } from '../../api/live';
import type { Agent, AgentToken } from '../../api/types';
import { ConfirmDialog, ErrorText, PageHeader, RelTime } from '../../components/common';
import { useNotify } from '../../components/notify';
import { absolute, shortAge, toDate, useNow } from '../../time';

type AgentLike = Agent & { agent_id: string };

export function AgentsPage() {
  const notify = useNotify();
  const [agents, setAgents] = useState<AgentLike[] | null>(null);
  const [error, setError] = useState('');
  const [platform, setPlatform] = useState('');
  const [region, setRegion] = useState('');
  const [rotateFor, setRotateFor] = useState<string | null>(null);
  const [newToken, setNewToken] = useState<{ agent: string; token: string } | null>(null);
  const [tokensFor, setTokensFor] = useState<string | null>(null);
  const now = useNow(1000);

  const load = useCallback(() => {
    call(api.GET('/api/v1/agents'))
      .then((a) => {
        setAgents((a ?? []) as AgentLike[]);
        setError('');
      })
      .catch((err) => setError(errorMessage(err)));
  }, []);

  useEffect(() => {
    load();
    const offAgent = live.subscribe('agent', (data) => {
      const a = data as AgentLike;
      if (!a || typeof a.agent_id !== 'string') return;
      setAgents((prev) => {
        if (!prev) return prev;
        const i = prev.findIndex((x) => x.agent_id === a.agent_id);
        if (i < 0) return [...prev, a];
        const next = prev.slice();
        next[i] = { ...prev[i], ...a };
        return next;
      });
    });
    const offRefetch = live.subscribe('refetch', load);
    return () => {
      offAgent();
      offRefetch();
    };
  }, [load]);

  const platforms = useMemo(() => [...new Set((agents ?? []).map((a) => a.platform).filter(Boolean))].sort(), [agents]);
  const regions = useMemo(() => [...new Set((agents ?? []).map((a) => a.region).filter((r): r is string => !!r))].sort(), [agents]);
  const shown = (agents ?? []).filter((a) => (!platform || a.platform === platform) && (!region || a.region === region));
  /** Leader identities of HA agents, by cluster. */
  const leaders = useMemo(() => {
    const m = new Map<string, string>();
    for (const a of agents ?? []) if (a.ha?.leader && a.ha.identity) m.set(a.cluster_id ?? '', a.ha.identity);
    return m;
  }, [agents]);

  async function rotate(agentId: string) {
    setRotateFor(null);
    try {
      const r = (await call(api.POST('/api/v1/agents/{agentId}/tokens/rotate', { params: { path: { agentId } }, body: {} }))) as unknown as { token?: string };
      if (r?.token) setNewToken({ agent: agentId, token: r.token });
      else notify('Token rotated', 'success');
    } catch (err) {
      notify(`Rotate failed: ${errorMessage(err)}`, 'error');
    }
  }

  return (
    <Box>
      <PageHeader title="Agents">
        <Typography color="text.secondary">{agents ? `${shown.length} of ${agents.length} agents` : ''}</Typography>
        <Tooltip title="Refresh">
          <IconButton aria-label="Refresh agents" onClick={load}>
            <RefreshIcon />
          </IconButton>
        </Tooltip>
      </PageHeader>
      <Box role="search" sx={{ display: 'flex', gap: 1.5, flexWrap: 'wrap', mb: 2 }}>
        <TextField
          select
          size="small"
          label="Platform"
          value={platform}
          onChange={(e) => setPlatform(e.target.value)}
          sx={{ minWidth: 150 }}
          id="agent-platform"
        >
          <MenuItem value="">All platforms</MenuItem>
          {platforms.map((p) => (
            <MenuItem key={p} value={p}>
              {p}
            </MenuItem>
          ))}
        </TextField>
        <TextField select size="small" label="Region" value={region} onChange={(e) => setRegion(e.target.value)} sx={{ minWidth: 150 }} id="agent-region">
          <MenuItem value="">All regions</MenuItem>
          {regions.map((r) => (
            <MenuItem key={r} value={r}>
              {r}
            </MenuItem>
          ))}
        </TextField>
      </Box>
      {error && <ErrorText>{error}</ErrorText>}
      <Paper variant="outlined">
        {!agents && !error && <LinearProgress aria-label="Loading agents" />}
        <TableContainer tabIndex={0}>
          <Table size="small" sx={{ minWidth: 920 }} aria-label="Agents">
            <TableHead>
              <TableRow>
                <TableCell>Agent</TableCell>
                <TableCell>Health</TableCell>
                <TableCell>Heartbeat</TableCell>
                <TableCell sx={{ minWidth: 170 }}>Capacity</TableCell>
                <TableCell>Platform</TableCell>
                <TableCell>Region</TableCell>
                <TableCell>HA role</TableCell>
                <TableCell>Tokens</TableCell>
              </TableRow>
            </TableHead>
            <TableBody>
              {shown.map((a) => {
                const hb = toDate(a.last_heartbeat ?? null);
                const age = hb ? (now - hb.getTime()) / 1000 : (a.heartbeat_age_s ?? null);
                const cap = a.capacity ?? null;
                const max = Number(cap?.max_sessions ?? 0);
                const cur = Number(cap?.current_sessions ?? 0);
                const pct = max > 0 ? Math.min(100, (cur / max) * 100) : 0;
                const leader = a.ha ? (a.ha.leader ? 'leader' : `standby (leader: ${leaders.get(a.cluster_id ?? '') ?? 'unknown'})`) : '—';
                return (
                  <TableRow key={a.agent_id} data-testid="agent-row" data-agent-id={a.agent_id} data-health={a.health} hover>
                    <TableCell>
                      <Typography variant="body2" sx={{ fontWeight: 600 }}>
                        {a.agent_id}
                      </Typography>
                      {a.cluster_id && (
                        <Typography variant="caption" color="text.secondary">
                          cluster {a.cluster_id}
                        </Typography>
                      )}
                    </TableCell>
                    <TableCell>
                      <HealthChip health={a.health} />
                    </TableCell>
                    <TableCell data-testid="agent-heartbeat">
                      <span title={hb ? absolute(hb) : ''}>{age === null ? '—' : `${shortAge(age)} ago`}</span>
                    </TableCell>
                    <TableCell>
                      <Box sx={{ display: 'flex', alignItems: 'center', gap: 1 }}>
                        <LinearProgress
                          variant="determinate"
                          value={pct}
                          color={pct >= 90 ? 'error' : pct >= 70 ? 'warning' : 'primary'}
                          sx={{ flexGrow: 1, height: 8, borderRadius: 4 }}
                          aria-label={`Capacity of ${a.agent_id}: ${cur} of ${max} sessions`}
                        />
                        <Typography variant="body2" sx={{ whiteSpace: 'nowrap' }}>
                          {cur} / {max || '—'}
                        </Typography>
                      </Box>
                    </TableCell>
                    <TableCell>{a.platform}</TableCell>
                    <TableCell>{a.region ?? '—'}</TableCell>
                    <TableCell>
                      {a.ha ? (
                        <Tooltip title={a.ha.identity ? `identity ${a.ha.identity}` : ''}>
                          <Chip size="small" variant={a.ha.leader ? 'filled' : 'outlined'} color={a.ha.leader ? 'primary' : 'default'} label={leader} />
                        </Tooltip>
                      ) : (
                        '—'
                      )}
                    </TableCell>
                    <TableCell sx={{ whiteSpace: 'nowrap' }}>
                      <Button size="small" onClick={() => setRotateFor(a.agent_id)} data-testid="agent-rotate">
                        Rotate
                      </Button>
                      <Button size="small" onClick={() => setTokensFor(a.agent_id)} data-testid="agent-tokens">
                        Tokens
                      </Button>
                    </TableCell>
                  </TableRow>
                );
              })}
              {agents && !shown.length && (
                <TableRow>
                  <TableCell colSpan={8}>
                    <Typography color="text.secondary">{agents.length ? 'No agent matches the filters.' : 'No agent has registered yet.'}</Typography>
                  </TableCell>
                </TableRow>
              )}
            </TableBody>
          </Table>
        </TableContainer>
      </Paper>

      <ConfirmDialog
        open={!!rotateFor}
        title={`Rotate the token of ${rotateFor}?`}
        confirmLabel="Rotate"
        onClose={() => setRotateFor(null)}
        onConfirm={() => void rotate(rotateFor!)}
      >
        A new token is issued for this agent and its current token is revoked at once: a connected agent is disconnected within seconds and cannot reconnect
        until its AGENT_TOKEN is the new one.
      </ConfirmDialog>
      <NewTokenDialog value={newToken} onClose={() => setNewToken(null)} />
      <TokensDialog agentId={tokensFor} onClose={() => setTokensFor(null)} />
    </Box>
  );
}

function HealthChip({ health }: { health: string }) {
  const color = health === 'online' ? 'success' : health === 'warning' ? 'warning' : health === 'offline' ? 'error' : 'default';
  return <Chip size="small" color={color} label={health} data-testid="agent-health" />;
}

function NewTokenDialog({ value, onClose }: { value: { agent: string; token: string } | null; onClose(): void }) {
  const [copied, setCopied] = useState(false);
  async function copy() {
    if (!value) return;
    try {
      await navigator.clipboard.writeText(value.token);
      setCopied(true);
    } catch {
      setCopied(false);
    }
  }
  return (
    <Dialog
      open={!!value}
      onClose={onClose}
      maxWidth="sm"
      fullWidth
      slotProps={{ transition: { onExited: () => setCopied(false) } }}
      data-testid="new-token-dialog"
    >
      <DialogTitle>New token for {value?.agent}</DialogTitle>
      <DialogContent>
        <Alert severity="warning" sx={{ mb: 2 }}>
          This token is shown only once. Copy it now and store it as the agent&apos;s AGENT_TOKEN; it cannot be displayed again.
        </Alert>
        <Box sx={{ display: 'flex', gap: 1, alignItems: 'flex-start' }}>
          <TextField
            fullWidth
            multiline
            label="Agent token"
            value={value?.token ?? ''}
            slotProps={{ htmlInput: { readOnly: true, spellCheck: false, 'data-testid': 'new-token', style: { fontFamily: 'monospace', fontSize: 13 } } }}
            onFocus={(e) => e.target.select()}
          />
          <Tooltip title={copied ? 'Copied' : 'Copy'}>
            <IconButton aria-label="Copy the token" onClick={copy} data-testid="copy-token">
              <ContentCopyIcon />
            </IconButton>
          </Tooltip>
        </Box>
        {copied && (
          <Typography variant="body2" color="success.main" role="status" sx={{ mt: 1 }}>
            Copied to the clipboard.
          </Typography>
        )}
      </DialogContent>
      <DialogActions>
        <Button variant="contained" onClick={onClose}>
          I have stored it
        </Button>
      </DialogActions>
    </Dialog>
  );
}

function TokensDialog({ agentId, onClose }: { agentId: string | null; onClose(): void }) {
  const notify = useNotify();
  const [tokens, setTokens] = useState<AgentToken[] | null>(null);
  const [error, setError] = useState('');
  const [revoke, setRevoke] = useState<AgentToken | null>(null);
  const load = useCallback(() => {
    if (!agentId) return;
    setTokens(null);
    call(api.GET('/api/v1/agents/{agentId}/tokens', { params: { path: { agentId } } }))
      .then((t) => setTokens((t ?? []) as AgentToken[]))
      .catch((err) => setError(errorMessage(err)));
  }, [agentId]);
  useEffect(() => {
    setError('');
    load();
  }, [load]);
  async function doRevoke(t: AgentToken) {
    setRevoke(null);
    try {
      await call(api.DELETE('/api/v1/agents/{agentId}/tokens/{tokenId}', { params: { path: { agentId: agentId!, tokenId: String(t.id) } } }));
      notify('Token revoked', 'success');
      load();
    } catch (err) {
      notify(`Revoke failed: ${errorMessage(err)}`, 'error');
    }
  }
  const field = (t: AgentToken, k: string) => (t as unknown as Record<string, string | null | undefined>)[k] ?? null;
  return (
    <Dialog open={!!agentId} onClose={onClose} maxWidth="md" fullWidth>
      <DialogTitle>Tokens of {agentId}</DialogTitle>
      <DialogContent>
        {error && <ErrorText>{error}</ErrorText>}
        {!tokens && !error && <LinearProgress aria-label="Loading tokens" />}
        {tokens && (
          <TableContainer tabIndex={0}>
            <Table size="small" aria-label={`Tokens of ${agentId}`} sx={{ minWidth: 560 }}>
              <TableHead>
                <TableRow>
                  <TableCell>Token</TableCell>
                  <TableCell>Created</TableCell>
                  <TableCell>Expires</TableCell>
                  <TableCell>Status</TableCell>
                  <TableCell>Action</TableCell>
                </TableRow>
              </TableHead>
              <TableBody>
                {tokens.map((t) => {
                  const revoked = field(t, 'revoked_at');
                  return (
                    <TableRow key={String(t.id)} data-testid="token-row">
                      <TableCell sx={{ fontFamily: 'monospace' }}>
                        {String(t.id).slice(0, 12)}
                        {field(t, 'description') ? (
                          <Typography variant="caption" sx={{ display: 'block' }}>
                            {field(t, 'description')}
                          </Typography>
                        ) : null}
                      </TableCell>
                      <TableCell>
                        <RelTime value={field(t, 'created_at')} />
                      </TableCell>
                      <TableCell>{field(t, 'expires_at') ? <RelTime value={field(t, 'expires_at')} /> : 'never'}</TableCell>
                      <TableCell>{revoked ? <Chip size="small" label="revoked" /> : <Chip size="small" color="success" label="active" />}</TableCell>
                      <TableCell>
                        {!revoked && (
                          <Button size="small" color="error" onClick={() => setRevoke(t)} data-testid="token-revoke">
                            Revoke
                          </Button>
                        )}
                      </TableCell>
                    </TableRow>
                  );
                })}
                {!tokens.length && (
                  <TableRow>
                    <TableCell colSpan={5}>No tokens.</TableCell>
                  </TableRow>
                )}
              </TableBody>
            </Table>
          </TableContainer>
        )}
      </DialogContent>
      <DialogActions>
        <Button onClick={onClose}>Close</Button>
      </DialogActions>
      <ConfirmDialog
        open={!!revoke}
        title="Revoke this token?"
        confirmLabel="Revoke"
        danger
        onClose={() => setRevoke(null)}
        onConfirm={() => void doRevoke(revoke!)}
      >
        <DialogContentText>An agent connected with this token is disconnected within seconds and cannot reconnect with it.</DialogContentText>
      </ConfirmDialog>
    </Dialog>
  );
}
