import Box from '@mui/material/Box';
import CircularProgress from '@mui/material/CircularProgress';
import Typography from '@mui/material/Typography';
import { useEffect } from 'react';
import { Redirect, Route, Switch, useLocation } from 'wouter';
import { useAuth } from './auth';
import { Shell } from './components/Shell';
import { PageHeader } from './components/common';
import { AgentsPage } from './pages/admin/Agents';
import { MigrationRunPage, MigrationsPage } from './pages/admin/Migrations';
import { TemplatesPage } from './pages/admin/Templates';
import { UsersPage } from './pages/admin/Users';
import { CatalogPage } from './pages/Catalog';
import { LoginPage } from './pages/Login';
import { SessionsPage } from './pages/Sessions';

const TITLES: Array<[RegExp, string]> = [
  [/^\/login/, 'Sign in'],
  [/^\/sessions/, 'Sessions'],
  [/^\/catalog/, 'Catalog'],
  [/^\/admin\/sessions/, 'All sessions'],
  [/^\/admin\/agents/, 'Agents'],
  [/^\/admin\/users/, 'Users'],
  [/^\/admin\/templates/, 'Templates'],
  [/^\/admin\/migrations/, 'Migrations'],
];

export function App() {
  const { me, isAdmin } = useAuth();
  const [location] = useLocation();

  useEffect(() => {
    const t = TITLES.find(([re]) => re.test(location))?.[1];
    document.title = t ? `${t} — StreamSpace` : 'StreamSpace';
  }, [location]);

  if (location === '/login') return <LoginPage />;
  if (me === null) return <Redirect to={`/login${location && location !== '/' ? `?next=${encodeURIComponent(location)}` : ''}`} replace />;
  if (me === undefined)
    return (
      <Box component="main" sx={{ display: 'grid', placeItems: 'center', height: '100vh' }}>
        <Typography variant="h1" sx={{ position: 'absolute', left: -10000 }}>
          StreamSpace
        </Typography>
        <CircularProgress aria-label="Loading" />
      </Box>
    );

  return (
    <Shell>
      <Switch>
        <Route path="/">
          <Redirect to="/sessions" replace />
        </Route>
        <Route path="/sessions">
          <SessionsPage admin={false} />
        </Route>
        <Route path="/catalog" component={CatalogPage} />
        {isAdmin && (
          <Route path="/admin/sessions">
            <SessionsPage admin />
          </Route>
        )}
        {isAdmin && <Route path="/admin/agents" component={AgentsPage} />}
        {isAdmin && <Route path="/admin/users" component={UsersPage} />}
        {isAdmin && <Route path="/admin/templates" component={TemplatesPage} />}
        {isAdmin && <Route path="/admin/migrations" component={MigrationsPage} />}
        {isAdmin && <Route path="/admin/migrations/:runId">{(p) => <MigrationRunPage runId={p.runId} />}</Route>}
        <Route>
          <PageHeader title="Not found" />
          <Typography>{location.startsWith('/admin') && !isAdmin ? 'This page is for administrators.' : 'There is no page here.'}</Typography>
        </Route>
      </Switch>
    </Shell>
  );
}
