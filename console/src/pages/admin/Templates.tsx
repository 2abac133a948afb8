import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import LinearProgress from '@mui/material/LinearProgress';
import List from '@mui/material/List';
import ListItem from '@mui/material/ListItem';
import ListItemText from '@mui/material/ListItemText';
import Paper from '@mui/material/Paper';
import Table from '@mui/material/Table';
import TableBody from '@mui/material/TableBody';
import TableCell from '@mui/material/TableCell';
import TableContainer from '@mui/material/TableContainer';
import TableHead from '@mui/material/TableHead';
import TableRow from '@mui/material/TableRow';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import useMediaQuery from '@mui/material/useMediaQuery';
import { useTheme } from '@mui/material/styles';
import AddIcon from '@mui/icons-material/Add';
import CheckCircleIcon from '@mui/icons-material/CheckCircle';
import { useCallback, useEffect, useRef, useState } from 'react';
import { api, ApiError, call, errorMessage, isAbort } from '../../api/client';
import type { Template, TemplateDetail, Validation } from '../../api/types';
import { ErrorText, PageHeader } from '../../components/common';
import { useNotify } from '../../components/notify';

const EXAMPLE = `apiVersion: stream.space/v1alpha1
kind: Template
metadata:
  name: firefox
spec:
  displayName: Firefox
  description: Firefox web browser
  category: Browsers
  baseImage: lscr.io/linuxserver/firefox:latest
  defaultResources:
    cpu: 1000m
    memory: 2Gi
`;

type Problem = { path?: string; line?: number | null; message: string };

export function TemplatesPage() {
  const [templates, setTemplates] = useState<Template[] | null>(null);
  const [error, setError] = useState('');
  const [editing, setEditing] = useState<{ name: string | null } | null>(null);
  const load = useCallback(() => {
    call(api.GET('/api/v1/templates'))
      .then((t) => setTemplates((t ?? []) as Template[]))
      .catch((err) => setError(errorMessage(err)));
  }, []);
  useEffect(load, [load]);

  return (
    <Box>
      <PageHeader title="Templates">
        <Typography color="text.secondary">{templates ? `${templates.length} templates` : ''}</Typography>
        <Button variant="contained" startIcon={<AddIcon />} onClick={() => setEditing({ name: null })} data-testid="template-add">
          Add template
        </Button>
      </PageHeader>
      {error && <ErrorText>{error}</ErrorText>}
      <Paper variant="outlined">
        {!templates && !error && <LinearProgress aria-label="Loading templates" />}
        <TableContainer tabIndex={0}>
          <Table size="small" sx={{ minWidth: 720 }} aria-label="Templates">
            <TableHead>
              <TableRow>
                <TableCell>Name</TableCell>
                <TableCell>Display name</TableCell>
                <TableCell>Category</TableCell>
                <TableCell>Image</TableCell>
                <TableCell>Source</TableCell>
                <TableCell>Actions</TableCell>
              </TableRow>
            </TableHead>
            <TableBody>
              {(templates ?? []).map((t) => (
                <TableRow key={t.name} hover data-testid="template-row" data-template={t.name}>
                  <TableCell sx={{ fontFamily: 'monospace' }}>{t.name}</TableCell>
                  <TableCell>{t.display_name}</TableCell>
                  <TableCell>{t.category ?? '—'}</TableCell>
                  <TableCell sx={{ maxWidth: 260, overflow: 'hidden', textOverflow: 'ellipsis', whiteSpace: 'nowrap' }} title={t.image ?? ''}>
                    {t.image ?? '—'}
                  </TableCell>
                  <TableCell>{t.source ?? '—'}</TableCell>
                  <TableCell>
                    <Button size="small" onClick={() => setEditing({ name: t.name })} aria-label={`Edit ${t.name}`} data-testid="template-edit">
                      Edit
                    </Button>
                  </TableCell>
                </TableRow>
              ))}
            </TableBody>
          </Table>
        </TableContainer>
      </Paper>
      <TemplateEditor target={editing} onClose={() => setEditing(null)} onSaved={load} />
    </Box>
  );
}

/** The editable text of a stored template: its manifest as JSON (valid YAML too). */
function sourceOf(t: TemplateDetail): string {
  const m = (t as { manifest?: Record<string, unknown> }).manifest;
  if (!m) return EXAMPLE.replace(/name: firefox/, `name: ${t.name}`);
  const full = m.apiVersion && m.kind ? m : { apiVersion: 'stream.space/v1alpha1', kind: 'Template', metadata: { name: t.name }, spec: m };
  return JSON.stringify(full, null, 2) + '\n';
}

function TemplateEditor({ target, onClose, onSaved }: { target: { name: string | null } | null; onClose(): void; onSaved(): void }) {
  const theme = useTheme();
  const fullScreen = useMediaQuery(theme.breakpoints.down('sm'), { noSsr: true });
  const notify = useNotify();
  const [source, setSource] = useState('');
  const [loading, setLoading] = useState(false);
  const [problems, setProblems] = useState<Problem[] | null>(null);
  const [checking, setChecking] = useState(false);
  const [saveError, setSaveError] = useState('');
  const [saving, setSaving] = useState(false);
  const validateAbort = useRef<AbortController | null>(null);
  const isNew = target?.name === null;

  useEffect(() => {
    if (!target) return;
    setProblems(null);
    setSaveError('');
    if (target.name === null) {
      setSource(EXAMPLE);
      return;
    }
    setLoading(true);
    call(api.GET('/api/v1/templates/{name}', { params: { path: { name: target.name } } }))
      .then((t) => setSource(sourceOf(t as TemplateDetail)))
      .catch((err) => setSaveError(errorMessage(err)))
      .finally(() => setLoading(false));
  }, [target]);

  // Validate as the user types (debounced 400 ms).
  useEffect(() => {
    if (!target || loading || !source.trim()) return;
    const t = window.setTimeout(() => {
      validateAbort.current?.abort();
      const ctrl = new AbortController();
      validateAbort.current = ctrl;
      setChecking(true);
      call(api.POST('/api/v1/templates/validate', { body: { source }, signal: ctrl.signal }))
        .then((v) => {
          const r = v as Validation;
          setProblems(r.valid ? [] : ((r.errors ?? []) as Problem[]));
        })
        .catch((err) => {
          if (isAbort(err)) return;
          if (err instanceof ApiError && err.body?.errors?.length) setProblems(err.body.errors);
          else setProblems([{ message: errorMessage(err) }]);
        })
        .finally(() => {
          if (validateAbort.current === ctrl) setChecking(false);
        });
    }, 400);
    return () => window.clearTimeout(t);
  }, [source, target, loading]);

  async function save() {
    setSaving(true);
    setSaveError('');
    try {
      if (isNew) await call(api.POST('/api/v1/templates', { body: { source } }));
      else await call(api.PUT('/api/v1/templates/{name}', { params: { path: { name: target!.name! } }, body: { source } }));
      notify(isNew ? 'Template added' : 'Template saved', 'success');
      onSaved();
      onClose();
    } catch (err) {
      if (err instanceof ApiError && err.body?.errors?.length) setProblems(err.body.errors);
      setSaveError(errorMessage(err));
    } finally {
      setSaving(false);
    }
  }

  const invalid = !!problems?.length;
  return (
    <Dialog open={!!target} onClose={onClose} maxWidth="md" fullWidth fullScreen={fullScreen} data-testid="template-editor">
      <DialogTitle>{isNew ? 'Add template' : `Edit ${target?.name ?? ''}`}</DialogTitle>
      <DialogContent>
        <Typography variant="body2" color="text.secondary" sx={{ mb: 1 }}>
          A v1 Template manifest, as YAML or JSON. It is checked as you type.
        </Typography>
        {loading && <LinearProgress aria-label="Loading the template" />}
        <TextField
          label="Manifest"
          multiline
          fullWidth
          minRows={14}
          maxRows={28}
          value={source}
          onChange={(e) => setSource(e.target.value)}
          error={invalid}
          disabled={loading}
          helperText={checking ? 'Checking…' : invalid ? `${problems!.length} problem${problems!.length === 1 ? '' : 's'}` : problems ? 'Valid' : ' '}
          slotProps={{
            htmlInput: {
              spellCheck: false,
              'data-testid': 'template-source',
              'aria-describedby': 'template-problems',
              style: { fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace', fontSize: 13, lineHeight: 1.5 },
            },
          }}
        />
        <Box id="template-problems" aria-live="polite" data-testid="template-problems">
          {problems && problems.length > 0 && (
            <List dense disablePadding>
              {problems.map((p, i) => (
                <ListItem key={i} disableGutters data-testid="template-problem" data-line={p.line ?? ''}>
                  <ListItemText
                    primary={
                      <Typography variant="body2" color="error">
                        {p.line ? `Line ${p.line}: ` : ''}
                        {p.path ? <code>{p.path}</code> : null}
                        {p.path ? ' — ' : ''}
                        {p.message}
                      </Typography>
                    }
                  />
                </ListItem>
              ))}
            </List>
          )}
          {problems && problems.length === 0 && (
            <Box sx={{ display: 'flex', alignItems: 'center', gap: 0.5, color: 'success.main', mt: 0.5 }}>
              <CheckCircleIcon fontSize="small" aria-hidden />
              <Typography variant="body2">The manifest is valid.</Typography>
            </Box>
          )}
        </Box>
        {saveError && (
          <Alert severity="error" sx={{ mt: 1 }}>
            {saveError}
          </Alert>
        )}
      </DialogContent>
      <DialogActions>
        <Button onClick={onClose}>Cancel</Button>
        <Button variant="contained" onClick={save} disabled={saving || loading || !source.trim() || invalid} data-testid="template-save">
          {isNew ? 'Add' : 'Save'}
        </Button>
      </DialogActions>
    </Dialog>
  );
}
