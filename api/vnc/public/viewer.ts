/**
 * The browser side of /vnc-viewer/<sessionId>: logs in if needed, fetches a single-use ticket,
 * connects noVNC to the gateway's tunnel, shows connect/disconnect status and reconnects by
 * itself with capped backoff when the stream drops. Bundled with noVNC by esbuild at build time.
 */
import RFB from '@novnc/novnc/lib/rfb';

// The user token lives in this tab's sessionStorage only (never localStorage: it would outlive the
// tab and be shared by every page of the origin); the VNC socket itself only ever sees a
// single-use ticket.
const TOKEN_KEY = 'streamspace.token';
const tokenStore = window.sessionStorage;
try {
  window.localStorage.removeItem(TOKEN_KEY); // what older viewers left behind
} catch {
  // storage disabled: nothing to clean
}
const MAX_BACKOFF_MS = 10_000;

const sessionId = document.body.dataset.sessionId ?? '';
const statusEl = document.getElementById('status') as HTMLElement;
const screenEl = document.getElementById('screen') as HTMLElement;
const loginForm = document.getElementById('login') as HTMLFormElement;
const loginError = document.getElementById('login-error') as HTMLElement;
const disconnectBtn = document.getElementById('disconnect') as HTMLButtonElement;
const reconnectBtn = document.getElementById('reconnect') as HTMLButtonElement;

let rfb: RFB | null = null;
let attempt = 0;
let retryTimer: number | undefined;
let userDisconnected = false;

function setStatus(state: 'login' | 'connecting' | 'connected' | 'disconnected' | 'error', text: string): void {
  statusEl.dataset.state = state;
  statusEl.textContent = text;
  document.title = `${text} — StreamSpace`;
}

async function api(path: string, init: RequestInit = {}): Promise<Response> {
  const token = tokenStore.getItem(TOKEN_KEY);
  return fetch(path, {
    ...init,
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}), ...(init.headers ?? {}) },
  });
}

function showLogin(message = ''): void {
  screenEl.hidden = true;
  loginForm.hidden = false;
  loginError.textContent = message;
  setStatus('login', 'Sign in to view this session');
}

loginForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const data = new FormData(loginForm);
  const res = await fetch('/api/v1/auth/login', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username: data.get('username'), password: data.get('password') }),
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) return showLogin(body.message ?? `login failed (${res.status})`);
  tokenStore.setItem(TOKEN_KEY, body.token);
  loginForm.hidden = true;
  screenEl.hidden = false;
  void connect();
});

async function connect(): Promise<void> {
  clearTimeout(retryTimer);
  userDisconnected = false;
  setStatus('connecting', attempt ? `Reconnecting (attempt ${attempt + 1})…` : 'Connecting…');
  let res: Response;
  try {
    res = await api(`/api/v1/sessions/${encodeURIComponent(sessionId)}/vnc-ticket`, { method: 'POST', body: '{}' });
  } catch {
    return scheduleReconnect('control plane unreachable');
  }
  if (res.status === 401) {
    tokenStore.removeItem(TOKEN_KEY);
    return showLogin('Your sign-in expired.');
  }
  const body = await res.json().catch(() => ({}));
  if (res.status === 404 || res.status === 403) return setStatus('error', body.message ?? 'Session not found');
  if (!res.ok) return scheduleReconnect(body.message ?? `ticket refused (${res.status})`);
  const wsUrl = new URL(body.url, location.href);
  wsUrl.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  screenEl.replaceChildren();
  rfb = new RFB(screenEl, wsUrl.toString(), { shared: true });
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.addEventListener('connect', () => {
    attempt = 0;
    setStatus('connected', 'Connected');
    rfb?.focus();
  });
  rfb.addEventListener('disconnect', (e: Event) => {
    rfb = null;
    const clean = (e as CustomEvent<{ clean: boolean }>).detail?.clean;
    if (userDisconnected) return setStatus('disconnected', 'Disconnected');
    scheduleReconnect(clean ? 'the session closed the connection' : 'connection lost');
  });
}

function scheduleReconnect(why: string): void {
  const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** attempt) * (0.75 + Math.random() * 0.25);
  attempt++;
  setStatus('disconnected', `Disconnected (${why}) — reconnecting in ${Math.ceil(delay / 1000)}s`);
  retryTimer = window.setTimeout(() => void connect(), delay);
}

disconnectBtn.addEventListener('click', () => {
  userDisconnected = true;
  clearTimeout(retryTimer);
  rfb?.disconnect();
  setStatus('disconnected', 'Disconnected');
});
reconnectBtn.addEventListener('click', () => {
  attempt = 0;
  rfb?.disconnect();
  void connect();
});

if (tokenStore.getItem(TOKEN_KEY)) void connect();
else showLogin();
