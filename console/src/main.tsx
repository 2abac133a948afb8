import createCache from '@emotion/cache';
import { CacheProvider } from '@emotion/react';
import CssBaseline from '@mui/material/CssBaseline';
import { ThemeProvider } from '@mui/material/styles';
import { StrictMode } from 'react';
import { createRoot } from 'react-dom/client';
import { App } from './App';
import { AuthProvider } from './auth';
import { NotifyProvider } from './components/notify';
import { theme } from './theme';

// The server puts a per-response nonce in <meta name="csp-nonce">: emotion's <style> tags carry it
// (style-src 'self' 'nonce-…').
const nonce = document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content;
const cache = createCache({ key: 'ss', nonce: nonce && nonce !== '__CSP_NONCE__' ? nonce : undefined, prepend: true });

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <CacheProvider value={cache}>
      <ThemeProvider theme={theme}>
        <CssBaseline />
        <NotifyProvider>
          <AuthProvider>
            <App />
          </AuthProvider>
        </NotifyProvider>
      </ThemeProvider>
    </CacheProvider>
  </StrictMode>,
);
