import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Chip, { type ChipProps } from '@mui/material/Chip';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogContentText from '@mui/material/DialogContentText';
import DialogTitle from '@mui/material/DialogTitle';
import Link from '@mui/material/Link';
import TextField from '@mui/material/TextField';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import { useState, type ReactNode } from 'react';
import { hasPlainWords, plainReason } from '../reasons';
import { absolute, relative, useNow } from '../time';

export function PageHeader({ title, children }: { title: string; children?: ReactNode }) {
  return (
    <Box sx={{ display: 'flex', alignItems: 'center', flexWrap: 'wrap', gap: 1.5, mb: 2 }}>
      <Typography variant="h1" component="h1" sx={{ flexGrow: 1 }}>
        {title}
      </Typography>
      {children}
    </Box>
  );
}

const STATE_COLOURS: Record<string, ChipProps['color']> = {
  running: 'success',
  pending: 'info',
  starting: 'info',
  hibernated: 'secondary',
  hibernating: 'secondary',
  waking: 'info',
  stopping: 'warning',
  terminating: 'warning',
  terminated: 'default',
  failed: 'error',
};

export function StateChip({ state, size = 'small' }: { state: string; size?: ChipProps['size'] }) {
  const color = STATE_COLOURS[state] ?? 'default';
  return <Chip label={state} color={color} size={size} variant={color === 'default' ? 'outlined' : 'filled'} />;
}

export function RelTime({ value, period = 30_000 }: { value: string | null | undefined; period?: number }) {
  const now = useNow(period);
  if (!value) return <span>—</span>;
  return (
    <Tooltip title={absolute(value)}>
      <time dateTime={value} title={absolute(value)}>
        {relative(value, now)}
      </time>
    </Tooltip>
  );
}

/** Plain words for a failure, with the raw message behind a "details" disclosure. */
export function Reason({ raw, compact = false }: { raw: string | null | undefined; compact?: boolean }) {
  const [open, setOpen] = useState(false);
  const words = plainReason(raw);
  const more = hasPlainWords(raw);
  if (compact)
    return (
      <>
        <Typography variant="caption" color="error" noWrap component="span" sx={{ display: 'block', maxWidth: '100%' }} title={words}>
          {words}{' '}
          <Link component="button" variant="caption" onClick={() => setOpen(true)} sx={{ verticalAlign: 'baseline' }}>
            details
          </Link>
        </Typography>
        <Dialog open={open} onClose={() => setOpen(false)} maxWidth="sm" fullWidth>
          <DialogTitle>Why it failed</DialogTitle>
          <DialogContent>
            <DialogContentText sx={{ mb: 2 }}>{words}</DialogContentText>
            <Typography variant="subtitle2" component="h2">
              Details
            </Typography>
            <Box component="pre" sx={{ whiteSpace: 'pre-wrap', wordBreak: 'break-word', fontSize: 13, bgcolor: 'grey.100', p: 1, borderRadius: 1 }}>
              {raw || '(no message)'}
            </Box>
          </DialogContent>
          <DialogActions>
            <Button onClick={() => setOpen(false)}>Close</Button>
          </DialogActions>
        </Dialog>
      </>
    );
  return (
    <Box>
      <Typography variant="body2">{words}</Typography>
      {more && (
        <Box component="details" sx={{ mt: 0.5, fontSize: 13 }}>
          <summary>details</summary>
          <Box component="pre" sx={{ whiteSpace: 'pre-wrap', wordBreak: 'break-word', m: 0, mt: 0.5 }}>
            {raw}
          </Box>
        </Box>
      )}
    </Box>
  );
}

export interface ConfirmProps {
  open: boolean;
  title: string;
  children?: ReactNode;
  confirmLabel: string;
  danger?: boolean;
  /** The user must type this text to confirm. */
  typeToConfirm?: string;
  busy?: boolean;
  onConfirm(): void;
  onClose(): void;
}

export function ConfirmDialog({ open, title, children, confirmLabel, danger, typeToConfirm, busy, onConfirm, onClose }: ConfirmProps) {
  const [typed, setTyped] = useState('');
  const ok = !typeToConfirm || typed.trim() === typeToConfirm;
  return (
    <Dialog open={open} onClose={onClose} maxWidth="sm" fullWidth slotProps={{ transition: { onExited: () => setTyped('') } }} aria-labelledby="confirm-title">
      <DialogTitle id="confirm-title">{title}</DialogTitle>
      <DialogContent>
        {typeof children === 'string' ? <DialogContentText>{children}</DialogContentText> : children}
        {typeToConfirm && (
          <TextField
            autoFocus
            fullWidth
            margin="normal"
            label={`Type ${typeToConfirm} to confirm`}
            value={typed}
            onChange={(e) => setTyped(e.target.value)}
            slotProps={{ htmlInput: { 'data-testid': 'confirm-type', autoComplete: 'off', spellCheck: false } }}
          />
        )}
      </DialogContent>
      <DialogActions>
        <Button onClick={onClose}>Cancel</Button>
        <Button
          variant="contained"
          color={danger ? 'error' : 'primary'}
          disabled={!ok || busy}
          onClick={onConfirm}
          data-testid="confirm-ok"
          autoFocus={!typeToConfirm}
        >
          {confirmLabel}
        </Button>
      </DialogActions>
    </Dialog>
  );
}

export function ErrorText({ children }: { children: ReactNode }) {
  return (
    <Typography color="error" role="alert" variant="body2" sx={{ my: 1 }}>
      {children}
    </Typography>
  );
}
