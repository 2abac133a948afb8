import Avatar from '@mui/material/Avatar';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardActions from '@mui/material/CardActions';
import CardContent from '@mui/material/CardContent';
import CardHeader from '@mui/material/CardHeader';
import Chip from '@mui/material/Chip';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogContentText from '@mui/material/DialogContentText';
import DialogTitle from '@mui/material/DialogTitle';
import InputAdornment from '@mui/material/InputAdornment';
import LinearProgress from '@mui/material/LinearProgress';
import MenuItem from '@mui/material/MenuItem';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import RocketLaunchIcon from '@mui/icons-material/RocketLaunch';
import SearchIcon from '@mui/icons-material/Search';
import { useEffect, useMemo, useState } from 'react';
import { useLocation } from 'wouter';
import { api, call, errorMessage } from '../api/client';
import type { Session, Template } from '../api/types';
import { ErrorText, PageHeader } from '../components/common';
import { plainReason } from '../reasons';

const AVATAR_COLOURS = ['#1d4ed8', '#6d28d9', '#0b5f8a', '#1b6e20', '#9a3412', '#9d174d', '#374151'];

function colourOf(text: string): string {
  let h = 0;
  for (const ch of text) h = (h * 31 + ch.charCodeAt(0)) >>> 0;
  return AVATAR_COLOURS[h % AVATAR_COLOURS.length];
}

export function CatalogPage() {
  const [templates, setTemplates] = useState<Template[] | null>(null);
  const [error, setError] = useState('');
  const [q, setQ] = useState('');
  const [category, setCategory] = useState('');
  const [launching, setLaunching] = useState<Template | null>(null);

  useEffect(() => {
    call(api.GET('/api/v1/templates'))
      .then((t) => setTemplates((t ?? []) as Template[]))
      .catch((err) => setError(errorMessage(err)));
  }, []);

  const categories = useMemo(() => [...new Set((templates ?? []).map((t) => t.category).filter((c): c is string => !!c))].sort(), [templates]);
  const shown = useMemo(() => {
    const needle = q.trim().toLowerCase();
    return (templates ?? []).filter(
      (t) =>
        (!category || t.category === category) &&
        (!needle || [t.name, t.display_name, t.description ?? '', t.category ?? '', ...(t.tags ?? [])].some((x) => String(x).toLowerCase().includes(needle))),
    );
  }, [templates, q, category]);

  return (
    <Box>
      <PageHeader title="Catalog">
        <Typography color="text.secondary">{templates ? `${shown.length} of ${templates.length} templates` : ''}</Typography>
      </PageHeader>
      <Box role="search" sx={{ display: 'flex', flexWrap: 'wrap', gap: 1.5, mb: 2 }}>
        <TextField
          label="Search templates"
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
            htmlInput: { type: 'search', 'data-testid': 'catalog-search' },
          }}
        />
        <TextField
          select
          label="Category"
          size="small"
          value={category}
          onChange={(e) => setCategory(e.target.value)}
          sx={{ minWidth: 180 }}
          id="catalog-category"
        >
          <MenuItem value="">All categories</MenuItem>
          {categories.map((c) => (
            <MenuItem key={c} value={c}>
              {c}
            </MenuItem>
          ))}
        </TextField>
      </Box>
      {error && <ErrorText>{error}</ErrorText>}
      {!templates && !error && <LinearProgress aria-label="Loading the catalog" />}
      {templates && !shown.length && <Typography color="text.secondary">No template matches.</Typography>}
      <Box sx={{ display: 'grid', gap: 2, gridTemplateColumns: 'repeat(auto-fill, minmax(260px, 1fr))' }}>
        {shown.map((t) => (
          <Card key={t.name} variant="outlined" data-testid="template-card" data-template={t.name} sx={{ display: 'flex', flexDirection: 'column' }}>
            <CardHeader
              avatar={
                // The template's icon URL may point anywhere: no external image is loaded (CSP, privacy).
                <Avatar sx={{ bgcolor: colourOf(t.category || t.name) }} aria-hidden>
                  {(t.display_name || t.name).slice(0, 1).toUpperCase()}
                </Avatar>
              }
              title={t.display_name || t.name}
              subheader={t.category || 'Uncategorised'}
              slotProps={{ title: { component: 'h2', variant: 'subtitle1', sx: { fontWeight: 600 } }, subheader: { variant: 'body2' } }}
            />
            <CardContent sx={{ flexGrow: 1, pt: 0 }}>
              <Typography variant="body2" color="text.secondary" sx={{ mb: 1.5 }}>
                {t.description || 'No description.'}
              </Typography>
              <Box sx={{ display: 'flex', gap: 0.5, flexWrap: 'wrap' }}>
                {t.resources?.cpu && <Chip size="small" variant="outlined" label={`CPU ${t.resources.cpu}`} />}
                {t.resources?.memory && <Chip size="small" variant="outlined" label={`Memory ${t.resources.memory}`} />}
              </Box>
            </CardContent>
            <CardActions>
              <Button
                variant="contained"
                startIcon={<RocketLaunchIcon />}
                onClick={() => setLaunching(t)}
                data-testid="launch"
                aria-label={`Launch ${t.display_name || t.name}`}
              >
                Launch
              </Button>
            </CardActions>
          </Card>
        ))}
      </Box>
      <LaunchDialog template={launching} onClose={() => setLaunching(null)} />
    </Box>
  );
}

function LaunchDialog({ template, onClose }: { template: Template | null; onClose(): void }) {
  const [, navigate] = useLocation();
  const [platform, setPlatform] = useState<'docker' | 'kubernetes'>('docker');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  async function launch() {
    if (!template) return;
    setBusy(true);
    setError('');
    try {
      const s = (await call(api.POST('/api/v1/sessions', { body: { template: template.name, platform } }))) as unknown as Session;
      onClose();
      navigate(`/sessions${s?.id ? `?highlight=${encodeURIComponent(s.id)}` : ''}`);
    } catch (err) {
      setError(plainReason(errorMessage(err)));
    } finally {
      setBusy(false);
    }
  }
  return (
    <Dialog open={!!template} onClose={onClose} maxWidth="xs" fullWidth slotProps={{ transition: { onExited: () => setError('') } }}>
      <DialogTitle>Launch {template?.display_name || template?.name}</DialogTitle>
      <DialogContent>
        <DialogContentText sx={{ mb: 2 }}>Choose where the desktop runs. It starts in the background; its progress shows in your sessions.</DialogContentText>
        <TextField
          select
          fullWidth
          label="Platform"
          value={platform}
          onChange={(e) => setPlatform(e.target.value as 'docker' | 'kubernetes')}
          id="launch-platform"
          slotProps={{ htmlInput: { 'data-testid': 'launch-platform' } }}
        >
          <MenuItem value="docker">Docker</MenuItem>
          <MenuItem value="kubernetes">Kubernetes</MenuItem>
        </TextField>
        {error && <ErrorText>{error}</ErrorText>}
      </DialogContent>
      <DialogActions>
        <Button onClick={onClose}>Cancel</Button>
        <Button variant="contained" onClick={launch} disabled={busy} data-testid="launch-confirm">
          Launch
        </Button>
      </DialogActions>
    </Dialog>
  );
}
