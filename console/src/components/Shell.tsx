import AppBar from '@mui/material/AppBar';
import Box from '@mui/material/Box';
import Button from '@mui/material/Button';
import Dialog from '@mui/material/Dialog';
import DialogActions from '@mui/material/DialogActions';
import DialogContent from '@mui/material/DialogContent';
import DialogTitle from '@mui/material/DialogTitle';
import Divider from '@mui/material/Divider';
import Drawer from '@mui/material/Drawer';
import IconButton from '@mui/material/IconButton';
import List from '@mui/material/List';
import ListItemButton from '@mui/material/ListItemButton';
import ListItemIcon from '@mui/material/ListItemIcon';
import ListItemText from '@mui/material/ListItemText';
import ListSubheader from '@mui/material/ListSubheader';
import Menu from '@mui/material/Menu';
import MenuItem from '@mui/material/MenuItem';
import TextField from '@mui/material/TextField';
import Toolbar from '@mui/material/Toolbar';
import Tooltip from '@mui/material/Tooltip';
import Typography from '@mui/material/Typography';
import useMediaQuery from '@mui/material/useMediaQuery';
import { useTheme } from '@mui/material/styles';
import AccountCircleIcon from '@mui/icons-material/AccountCircle';
import AppsIcon from '@mui/icons-material/Apps';
import CircleIcon from '@mui/icons-material/Circle';
import DescriptionIcon from '@mui/icons-material/Description';
import DesktopWindowsIcon from '@mui/icons-material/DesktopWindows';
import DnsIcon from '@mui/icons-material/Dns';
import GroupIcon from '@mui/icons-material/Group';
import MenuIcon from '@mui/icons-material/Menu';
import MoveUpIcon from '@mui/icons-material/MoveUp';
import ViewListIcon from '@mui/icons-material/ViewList';
import { useState, type ReactNode, type FormEvent } from 'react';
import { Link as RouterLink, useLocation } from 'wouter';
import { api, call, errorMessage, setToken } from '../api/client';
import { useLiveStatus } from '../api/live';
import { useAuth } from '../auth';
import { useNotify } from './notify';

export const DRAWER_WIDTH = 232;

interface NavItem {
  href: string;
  label: string;
  icon: ReactNode;
}
const USER_NAV: NavItem[] = [
  { href: '/sessions', label: 'Sessions', icon: <DesktopWindowsIcon /> },
  { href: '/catalog', label: 'Catalog', icon: <AppsIcon /> },
];
const ADMIN_NAV: NavItem[] = [
  { href: '/admin/sessions', label: 'All sessions', icon: <ViewListIcon /> },
  { href: '/admin/agents', label: 'Agents', icon: <DnsIcon /> },
  { href: '/admin/users', label: 'Users', icon: <GroupIcon /> },
  { href: '/admin/templates', label: 'Templates', icon: <DescriptionIcon /> },
  { href: '/admin/migrations', label: 'Migrations', icon: <MoveUpIcon /> },
];

function LiveIndicator() {
  const status = useLiveStatus();
  const connected = status === 'connected';
  const label = connected ? 'Live' : 'Reconnecting…';
  return (
    <Tooltip title={connected ? 'Live updates are on' : 'Live updates are reconnecting'}>
      <Box
        data-testid="live-status"
        data-state={connected ? 'connected' : 'reconnecting'}
        role="status"
        aria-live="polite"
        sx={{ display: 'flex', alignItems: 'center', gap: 0.5, px: 1, py: 0.25, borderRadius: 4, bgcolor: 'rgba(255,255,255,0.15)', fontSize: 13 }}
      >
        <CircleIcon sx={{ fontSize: 10, color: connected ? '#86efac' : '#fcd34d' }} aria-hidden />
        <span>{label}</span>
      </Box>
    </Tooltip>
  );
}

function ChangePassword({ open, onClose }: { open: boolean; onClose(): void }) {
  const notify = useNotify();
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  async function submit(e: FormEvent) {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      const r = await call(api.POST('/api/v1/auth/password', { body: { current_password: current, new_password: next } }));
      const token = (r as { token?: string }).token;
      if (token) setToken(token);
      notify('Password changed', 'success');
      onClose();
    } catch (err) {
      setError(errorMessage(err));
    } finally {
      setBusy(false);
    }
  }
  return (
    <Dialog open={open} onClose={onClose} maxWidth="xs" fullWidth slotProps={{ transition: { onExited: () => (setCurrent(''), setNext(''), setError('')) } }}>
      <form onSubmit={submit}>
        <DialogTitle>Change password</DialogTitle>
        <DialogContent>
          <TextField
            label="Current password"
            type="password"
            autoComplete="current-password"
            fullWidth
            margin="dense"
            required
            value={current}
            onChange={(e) => setCurrent(e.target.value)}
          />
          <TextField
            label="New password"
            type="password"
            autoComplete="new-password"
            fullWidth
            margin="dense"
            required
            value={next}
            onChange={(e) => setNext(e.target.value)}
            error={!!error}
            helperText={error || ' '}
          />
        </DialogContent>
        <DialogActions>
          <Button onClick={onClose}>Cancel</Button>
          <Button type="submit" variant="contained" disabled={busy || !current || !next}>
            Change
          </Button>
        </DialogActions>
      </form>
    </Dialog>
  );
}

export function Shell({ children }: { children: ReactNode }) {
  const theme = useTheme();
  const wide = useMediaQuery(theme.breakpoints.up('md'), { noSsr: true });
  const [mobileOpen, setMobileOpen] = useState(false);
  const [menuEl, setMenuEl] = useState<HTMLElement | null>(null);
  const [pwOpen, setPwOpen] = useState(false);
  const { me, isAdmin, signOut } = useAuth();
  const [location, navigate] = useLocation();

  const navList = (
    <Box component="nav" aria-label="Main">
      <List component="div">
        {USER_NAV.map((item) => (
          <NavLink key={item.href} item={item} active={location === item.href} onClick={() => setMobileOpen(false)} />
        ))}
      </List>
      {isAdmin && (
        <>
          <Divider />
          <List component="div" subheader={<ListSubheader component="div">Administration</ListSubheader>}>
            {ADMIN_NAV.map((item) => (
              <NavLink key={item.href} item={item} active={location.startsWith(item.href)} onClick={() => setMobileOpen(false)} />
            ))}
          </List>
        </>
      )}
    </Box>
  );

  return (
    <Box sx={{ display: 'flex', minHeight: '100vh' }}>
      <AppBar position="fixed" sx={{ zIndex: (t) => t.zIndex.drawer + 1 }} component="header">
        <Toolbar sx={{ gap: 1 }}>
          {!wide && (
            <IconButton color="inherit" edge="start" aria-label="Open navigation" onClick={() => setMobileOpen(true)}>
              <MenuIcon />
            </IconButton>
          )}
          <Typography variant="h6" component="div" noWrap sx={{ flexGrow: 1, fontWeight: 600 }}>
            StreamSpace
          </Typography>
          <LiveIndicator />
          <Button
            color="inherit"
            aria-label={`Account menu for ${me?.username ?? 'user'}`}
            aria-haspopup="menu"
            onClick={(e) => setMenuEl(e.currentTarget)}
            startIcon={<AccountCircleIcon />}
            sx={{ textTransform: 'none', minWidth: 0 }}
            data-testid="user-menu"
          >
            <Box component="span" sx={{ display: { xs: 'none', sm: 'inline' } }}>
              {me?.username}
            </Box>
          </Button>
          <Menu anchorEl={menuEl} open={!!menuEl} onClose={() => setMenuEl(null)}>
            <MenuItem disabled>
              {me?.username} ({me?.role})
            </MenuItem>
            <MenuItem
              onClick={() => {
                setMenuEl(null);
                setPwOpen(true);
              }}
            >
              Change password
            </MenuItem>
            <MenuItem
              data-testid="sign-out"
              onClick={() => {
                setMenuEl(null);
                signOut();
                navigate('/login');
              }}
            >
              Sign out
            </MenuItem>
          </Menu>
        </Toolbar>
      </AppBar>
      {wide ? (
        <Drawer variant="permanent" sx={{ width: DRAWER_WIDTH, flexShrink: 0, '& .MuiDrawer-paper': { width: DRAWER_WIDTH, boxSizing: 'border-box' } }}>
          <Toolbar />
          {navList}
        </Drawer>
      ) : (
        <Drawer
          variant="temporary"
          open={mobileOpen}
          onClose={() => setMobileOpen(false)}
          ModalProps={{ keepMounted: true }}
          slotProps={{ paper: { 'aria-label': 'Navigation' } as object }}
          sx={{ '& .MuiDrawer-paper': { width: DRAWER_WIDTH, boxSizing: 'border-box' } }}
        >
          {/* The app bar stays above the drawer: this spacer keeps the first link out from under it. */}
          <Toolbar />
          {navList}
        </Drawer>
      )}
      <Box component="main" sx={{ flexGrow: 1, minWidth: 0, p: { xs: 1, sm: 3 } }}>
        <Toolbar />
        {children}
      </Box>
      <ChangePassword open={pwOpen} onClose={() => setPwOpen(false)} />
    </Box>
  );
}

function NavLink({ item, active, onClick }: { item: NavItem; active: boolean; onClick(): void }) {
  return (
    <ListItemButton component={RouterLink} href={item.href} selected={active} aria-current={active ? 'page' : undefined} onClick={onClick}>
      <ListItemIcon sx={{ minWidth: 40 }}>{item.icon}</ListItemIcon>
      <ListItemText primary={item.label} />
    </ListItemButton>
  );
}
