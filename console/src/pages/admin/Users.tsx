import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Chip from '@mui/material/Chip';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import IconButton from '@mui/material/IconButton';
import LinearProgress from '@mui/material/LinearProgress';
import MenuItem from '@mui/material/MenuItem';
import Paper from '@mui/material/Paper';
import Switch from '@mui/material/Switch';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import DeleteIcon from '@mui/icons-material/Delete';
import EditIcon from '@mui/icons-material/Edit';
import KeyIcon from '@mui/icons-material/Key';
import PersonAddIcon from '@mui/icons-material/PersonAdd';
import { useCallback, useEffect, useState, type FormEvent, type ReactNode } from 'react';
import { api, call, errorMessage } from '../../api/client';
import type { User } from '../../api/types';
import { useAuth } from '../../auth';
import { ConfirmDialog, ErrorText, PageHeader } from '../../components/common';
import { useNotify } from '../../components/notify';

type Role = 'admin' | 'user';

export function UsersPage() {
  const notify = useNotify();
  const { me } = useAuth();
  const [users, setUsers] = useState<User[] | null>(null);
  const [error, setError] = useState('');
  const [creating, setCreating] = useState(false);
  const [quotaFor, setQuotaFor] = useState<User | null>(null);
  const [passwordFor, setPasswordFor] = useState<User | null>(null);
  const [deleting, setDeleting] = useState<User | null>(null);
  const [q, setQ] = useState('');

  const load = useCallback(() => {
    call(api.GET('/api/v1/users'))
      .then((u) => {
        setUsers((u ?? []) as User[]);
        setError('');
      })
      .catch((err) => setError(errorMessage(err)));
  }, []);
  useEffect(load, [load]);

  async function patch(u: User, body: { role?: Role; active?: boolean }) {
    try {
      await call(api.PATCH('/api/v1/users/{username}', { params: { path: { username: u.username } }, body }));
      setUsers((prev) => prev?.map((x) => (x.username === u.username ? ({ ...x, ...body } as User) : x)) ?? prev);
      notify(body.active !== undefined ? `${u.username} ${body.active ? 'enabled' : 'disabled'}` : `${u.username} is now ${body.role}`, 'success');
    } catch (err) {
      notify(errorMessage(err), 'error');
    }
  }

  async function remove(u: User) {
    setDeleting(null);
    try {
      await call(api.DELETE('/api/v1/users/{username}', { params: { path: { username: u.username } } }));
      setUsers((prev) => prev?.filter((x) => x.username !== u.username) ?? prev);
      notify(`${u.username} deleted`, 'success');
    } catch (err) {
      notify(errorMessage(err), 'error');
    }
  }

  const needle = q.trim().toLowerCase();
  const shown = (users ?? []).filter((u) => !needle || u.username.toLowerCase().includes(needle) || (u.email ?? '').toLowerCase().includes(needle));

  return (
    <Box>
      <PageHeader title="Users">
        <Typography color="text.secondary">{users ? `${users.length} users` : ''}</Typography>
        <Button variant="contained" startIcon={<PersonAddIcon />} onClick={() => setCreating(true)} data-testid="user-create">
          Add user
        </Button>
      </PageHeader>
      <Box role="search" sx={{ mb: 2 }}>
        <TextField size="small" label="Search users" value={q} onChange={(e) => setQ(e.target.value)} slotProps={{ htmlInput: { type: 'search' } }} />
      </Box>
      {error && <ErrorText>{error}</ErrorText>}
      <Paper variant="outlined">
        {!users && !error && <LinearProgress aria-label="Loading users" />}
        <TableContainer tabIndex={0}>
          <Table size="small" sx={{ minWidth: 860 }} aria-label="Users">
            <TableHead>
              <TableRow>
                <TableCell>Username</TableCell>
                <TableCell>Email</TableCell>
                <TableCell>Role</TableCell>
                <TableCell>Active</TableCell>
                <TableCell>Quota</TableCell>
                <TableCell>Actions</TableCell>
              </TableRow>
            </TableHead>
            <TableBody>
              {shown.map((u) => {
                const self = u.username === me?.username;
                const quota = u.quota;
                return (
                  <TableRow key={u.username} hover data-testid="user-row" data-username={u.username}>
                    <TableCell sx={{ fontWeight: 600 }}>{u.username}</TableCell>
                    <TableCell>{u.email || '—'}</TableCell>
                    <TableCell>
                      <TextField
                        select
                        size="small"
                        value={u.role === 'admin' ? 'admin' : 'user'}
                        onChange={(e) => void patch(u, { role: e.target.value as Role })}
                        disabled={self}
                        variant="standard"
                        slotProps={{ htmlInput: { 'aria-label': `Role of ${u.username}` } }}
                      >
                        <MenuItem value="user">user</MenuItem>
                        <MenuItem value="admin">admin</MenuItem>
                      </TextField>
                    </TableCell>
                    <TableCell>
                      <Switch
                        checked={u.active !== false}
                        disabled={self}
                        onChange={(e) => void patch(u, { active: e.target.checked })}
                        slotProps={{ input: { 'aria-label': `${u.username} is active` } }}
                      />
                    </TableCell>
                    <TableCell>
                      {quota ? (
                        <Box sx={{ display: 'flex', gap: 0.5, flexWrap: 'wrap' }}>
                          {quota.max_sessions != null && <Chip size="small" variant="outlined" label={`${quota.max_sessions} sessions`} />}
                          {quota.max_cpu && <Chip size="small" variant="outlined" label={`CPU ${quota.max_cpu}`} />}
                          {quota.max_memory && <Chip size="small" variant="outlined" label={`Mem ${quota.max_memory}`} />}
                        </Box>
                      ) : (
                        <Typography variant="body2" color="text.secondary">
                          default
                        </Typography>
                      )}
                    </TableCell>
                    <TableCell sx={{ whiteSpace: 'nowrap' }}>
                      <Tooltip title="Edit quota">
                        <IconButton size="small" aria-label={`Edit the quota of ${u.username}`} onClick={() => setQuotaFor(u)}>
                          <EditIcon fontSize="small" />
                        </IconButton>
                      </Tooltip>
                      <Tooltip title="Reset password">
                        <IconButton size="small" aria-label={`Reset the password of ${u.username}`} onClick={() => setPasswordFor(u)}>
                          <KeyIcon fontSize="small" />
                        </IconButton>
                      </Tooltip>
                      <Tooltip title={self ? 'You cannot delete yourself' : 'Delete'}>
                        <span>
                          <IconButton size="small" aria-label={`Delete ${u.username}`} onClick={() => setDeleting(u)} disabled={self}>
                            <DeleteIcon fontSize="small" />
                          </IconButton>
                        </span>
                      </Tooltip>
                    </TableCell>
                  </TableRow>
                );
              })}
            </TableBody>
          </Table>
        </TableContainer>
      </Paper>
      <CreateUserDialog open={creating} onClose={() => setCreating(false)} onCreated={load} />
      <QuotaDialog user={quotaFor} onClose={() => setQuotaFor(null)} onSaved={load} />
      <PasswordDialog user={passwordFor} onClose={() => setPasswordFor(null)} />
      <ConfirmDialog
        open={!!deleting}
        title={`Delete ${deleting?.username}?`}
        confirmLabel="Delete"
        danger
        onClose={() => setDeleting(null)}
        onConfirm={() => void remove(deleting!)}
      >
        Their running sessions are stopped first, then the account is removed. This cannot be undone.
      </ConfirmDialog>
    </Box>
  );
}

function FormDialog({
  open,
  title,
  submitLabel,
  busy,
  error,
  onClose,
  onSubmit,
  onExited,
  children,
}: {
  open: boolean;
  title: string;
  submitLabel: string;
  busy: boolean;
  error: string;
  onClose(): void;
  onSubmit(): void;
  onExited?(): void;
  children: ReactNode;
}) {
  return (
    <Dialog open={open} onClose={onClose} maxWidth="xs" fullWidth slotProps={{ transition: { onExited } }}>
      <form
        onSubmit={(e: FormEvent) => {
          e.preventDefault();
          onSubmit();
        }}
      >
        <DialogTitle>{title}</DialogTitle>
        <DialogContent>
          {children}
          {error && <ErrorText>{error}</ErrorText>}
        </DialogContent>
        <DialogActions>
          <Button onClick={onClose}>Cancel</Button>
          <Button type="submit" variant="contained" disabled={busy} data-testid="dialog-submit">
            {submitLabel}
          </Button>
        </DialogActions>
      </form>
    </Dialog>
  );
}

function useForm() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const run = async (fn: () => Promise<void>) => {
    setBusy(true);
    setError('');
    try {
      await fn();
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, setError, run };
}

function CreateUserDialog({ open, onClose, onCreated }: { open: boolean; onClose(): void; onCreated(): void }) {
  const notify = useNotify();
  const f = useForm();
  const [username, setUsername] = useState('');
  const [email, setEmail] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState<Role>('user');
  return (
    <FormDialog
      open={open}
      title="Add user"
      submitLabel="Create"
      busy={f.busy}
      error={f.error}
      onClose={onClose}
      onExited={() => {
        setUsername('');
        setEmail('');
        setPassword('');
        setRole('user');
        f.setError('');
      }}
      onSubmit={() =>
        f.run(async () => {
          await call(api.POST('/api/v1/users', { body: { username, password, role, ...(email ? { email } : {}) } }));
          notify(`${username} created`, 'success');
          onCreated();
          onClose();
        })
      }
    >
      <TextField label="Username" fullWidth margin="dense" required value={username} onChange={(e) => setUsername(e.target.value)} autoComplete="off" />
      <TextField label="Email" type="email" fullWidth margin="dense" value={email} onChange={(e) => setEmail(e.target.value)} autoComplete="off" />
      <TextField
        label="Password"
        type="password"
        fullWidth
        margin="dense"
        required
        value={password}
        onChange={(e) => setPassword(e.target.value)}
        autoComplete="new-password"
      />
      <TextField select label="Role" fullWidth margin="dense" value={role} onChange={(e) => setRole(e.target.value as Role)} id="new-user-role">
        <MenuItem value="user">user</MenuItem>
        <MenuItem value="admin">admin</MenuItem>
      </TextField>
    </FormDialog>
  );
}

// As the gateway checks them (PUT /users/:username/quota).
const CPU_RE = /^([0-9]+m|[0-9]+(\.[0-9]+)?)$/;
const MEM_RE = /^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)?$/;

function QuotaDialog({ user, onClose, onSaved }: { user: User | null; onClose(): void; onSaved(): void }) {
  const notify = useNotify();
  const f = useForm();
  const [maxSessions, setMaxSessions] = useState('');
  const [cpu, setCpu] = useState('');
  const [memory, setMemory] = useState('');
  useEffect(() => {
    if (!user) return;
    setMaxSessions(user.quota?.max_sessions != null ? String(user.quota.max_sessions) : '');
    setCpu(user.quota?.max_cpu ?? '');
    setMemory(user.quota?.max_memory ?? '');
    f.setError('');
  }, [user]);
  const cpuBad = !!cpu.trim() && !CPU_RE.test(cpu.trim());
  const memBad = !!memory.trim() && !MEM_RE.test(memory.trim());
  const sessionsBad = !!maxSessions.trim() && !/^\d+$/.test(maxSessions.trim());
  const incomplete = !maxSessions.trim() || !cpu.trim() || !memory.trim();
  return (
    <FormDialog
      open={!!user}
      title={`Quota of ${user?.username ?? ''}`}
      submitLabel="Save"
      busy={f.busy || cpuBad || memBad || sessionsBad || incomplete}
      error={f.error}
      onClose={onClose}
      onSubmit={() =>
        f.run(async () => {
          await call(
            api.PUT('/api/v1/users/{username}/quota', {
              params: { path: { username: user!.username } },
              body: { max_sessions: Number(maxSessions.trim()), max_cpu: cpu.trim(), max_memory: memory.trim() },
            }),
          );
          notify(`Quota of ${user!.username} saved`, 'success');
          onSaved();
          onClose();
        })
      }
    >
      <TextField
        label="Max sessions"
        fullWidth
        margin="dense"
        value={maxSessions}
        onChange={(e) => setMaxSessions(e.target.value)}
        error={sessionsBad}
        required
        helperText={sessionsBad ? 'A whole number' : 'Sessions this user may have at once'}
        slotProps={{ htmlInput: { inputMode: 'numeric' } }}
      />
      <TextField
        label="Max CPU"
        fullWidth
        margin="dense"
        value={cpu}
        onChange={(e) => setCpu(e.target.value)}
        error={cpuBad}
        required
        helperText={cpuBad ? 'Cores or millicores, e.g. 4 or 4000m' : 'e.g. 4000m'}
      />
      <TextField
        label="Max memory"
        fullWidth
        margin="dense"
        value={memory}
        onChange={(e) => setMemory(e.target.value)}
        error={memBad}
        required
        helperText={memBad ? 'A quantity in Ki, Mi, Gi or Ti, e.g. 16Gi' : 'e.g. 16Gi'}
      />
    </FormDialog>
  );
}

function PasswordDialog({ user, onClose }: { user: User | null; onClose(): void }) {
  const notify = useNotify();
  const f = useForm();
  const [password, setPassword] = useState('');
  return (
    <FormDialog
      open={!!user}
      title={`Reset the password of ${user?.username ?? ''}`}
      submitLabel="Reset"
      busy={f.busy || !password}
      error={f.error}
      onClose={onClose}
      onExited={() => {
        setPassword('');
        f.setError('');
      }}
      onSubmit={() =>
        f.run(async () => {
          await call(api.POST('/api/v1/users/{username}/password', { params: { path: { username: user!.username } }, body: { password } }));
          notify(`Password of ${user!.username} reset; their older sign-ins stop working`, 'success');
          onClose();
        })
      }
    >
      <TextField
        label="New password"
        type="password"
        fullWidth
        margin="dense"
        required
        value={password}
        onChange={(e) => setPassword(e.target.value)}
        autoComplete="new-password"
      />
    </FormDialog>
  );
}
