import Alert from '@mui/material/Alert';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Card from '@mui/material/Card';
import CardContent from '@mui/material/CardContent';
import TextField from '@mui/material/TextField';
import Typography from '@mui/material/Typography';
import { useEffect, useState, type FormEvent } from 'react';
import { useLocation, useSearch } from 'wouter';
import { api, ApiError, callFull, errorMessage, getToken } from '../api/client';
import { useAuth, type Me } from '../auth';

export function LoginPage() {
  const { me, signedIn } = useAuth();
  const [, navigate] = useLocation();
  const search = useSearch();
  const next = safeNext(new URLSearchParams(search).get('next'));
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState('');
  const [retryUntil, setRetryUntil] = useState(0);
  const [now, setNow] = useState(Date.now());
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    if (me && getToken()) navigate(next, { replace: true });
  }, [me, navigate, next]);

  useEffect(() => {
    if (retryUntil <= Date.now()) return;
    const t = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(t);
  }, [retryUntil]);
  const waitS = Math.max(0, Math.ceil((retryUntil - now) / 1000));

  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      const { data } = await callFull(api.POST('/api/v1/auth/login', { body: { username, password } }));
      const d = data as unknown as { token: string; user: Me };
      signedIn(d.token, d.user);
      navigate(next, { replace: true });
    } catch (err) {
      if (err instanceof ApiError && err.status === 429) {
        const after = Number(err.response?.headers.get('retry-after') ?? '60');
        const secs = Number.isFinite(after) && after > 0 ? after : 60;
        setRetryUntil(Date.now() + secs * 1000);
        setNow(Date.now());
        setError(`Too many failed sign-ins. Try again in ${secs} s.`);
      } else if (err instanceof ApiError && err.status === 401) {
        setError('Wrong username or password.');
      } else setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  }

  return (
    <Box component="main" sx={{ minHeight: '100vh', display: 'grid', placeItems: 'center', p: 2, bgcolor: 'background.default' }}>
      <Card sx={{ width: '100%', maxWidth: 400 }} elevation={2}>
        <CardContent component="form" onSubmit={submit} sx={{ display: 'flex', flexDirection: 'column', gap: 2, p: 3 }} aria-labelledby="login-title">
          <Typography variant="h1" id="login-title">
            Sign in to StreamSpace
          </Typography>
          {error && (
            <Alert severity="error" data-testid="login-error">
              {waitS > 0 ? `Too many failed sign-ins. Try again in ${waitS} s.` : error}
            </Alert>
          )}
          <TextField
            label="Username"
            name="username"
            autoComplete="username"
            autoFocus
            required
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
          <TextField
            label="Password"
            name="password"
            type="password"
            autoComplete="current-password"
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
          <Button type="submit" variant="contained" size="large" disabled={busy || waitS > 0 || !username || !password} data-testid="login-submit">
            Sign in
          </Button>
        </CardContent>
      </Card>
    </Box>
  );
}

function safeNext(v: string | null): string {
  return v && v.startsWith('/') && !v.startsWith('//') && !v.startsWith('/login') ? v : '/sessions';
}
