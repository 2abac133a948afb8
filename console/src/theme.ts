import { createTheme } from '@mui/material/styles';

// System fonts only: the CSP allows no external fonts. Colours chosen for WCAG AA contrast with white text.
export const theme = createTheme({
  palette: {
    mode: 'light',
    primary: { main: '#1d4ed8' },
    secondary: { main: '#6d28d9' },
    success: { main: '#1b6e20', contrastText: '#ffffff' },
    warning: { main: '#a04a00', contrastText: '#ffffff' },
    info: { main: '#0b5f8a', contrastText: '#ffffff' },
    error: { main: '#b3261e', contrastText: '#ffffff' },
    background: { default: '#f5f6f8', paper: '#ffffff' },
    text: { primary: '#1a1c1e', secondary: '#4a4f57' },
  },
  typography: {
    fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", "Liberation Sans", sans-serif',
    h1: { fontSize: '1.6rem', fontWeight: 600 },
  },
  shape: { borderRadius: 8 },
  components: {
    MuiButton: { defaultProps: { disableElevation: true }, styleOverrides: { root: { textTransform: 'none' } } },
    MuiTooltip: { defaultProps: { arrow: true } },
  },
});
