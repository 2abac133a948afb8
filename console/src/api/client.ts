/**
 * The typed API client (openapi-fetch over the generated `paths`). Every request carries the
 * user's token from sessionStorage (`streamspace.token`, shared with the VNC viewer); a 401 ends
 * the session in the browser and goes to /login.
 */
import createClient, { type Middleware } from 'openapi-fetch';
import type { paths } from './openapi';

export const TOKEN_KEY = 'streamspace.token';

export function getToken(): string | null {
  try {
    return window.sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token: string | null): void {
  try {
    if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
    else window.sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token only lives as long as this page
  }
}

type SignOutListener = () => void;
const signOutListeners = new Set<SignOutListener>();
/** Called when the server refuses the token (401): the app clears its state and shows /login. */
export function onSignedOut(fn: SignOutListener): () => void {
  signOutListeners.add(fn);
  return () => signOutListeners.delete(fn);
}
export function signOut(): void {
  setToken(null);
  for (const fn of [...signOutListeners]) fn();
}

export function authHeaders(): Record<string, string> {
  const token = getToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

const auth: Middleware = {
  onRequest({ request }) {
    const token = getToken();
    if (token) request.headers.set('Authorization', `Bearer ${token}`);
    return request;
  },
  onResponse({ request, response }) {
    if (response.status === 401 && !new URL(request.url, window.location.origin).pathname.endsWith('/auth/login')) signOut();
    return response;
  },
};

export const api = createClient<paths>({ baseUrl: window.location.origin });
api.use(auth);

/** The gateway's error body. */
export interface ErrorBody {
  statusCode?: number;
  error?: string;
  message?: string;
  errors?: Array<{ path?: string; line?: number | null; message: string }>;
}

export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
    readonly body: ErrorBody | null,
    readonly response: Response | null,
  ) {
    super(message);
  }
}

/** Plain message from an error body `{statusCode, error, message, errors?}` (or anything thrown). */
export function errorMessage(err: unknown, status?: number): string {
  if (err instanceof ApiError) return err.message;
  if (err && typeof err === 'object') {
    const b = err as ErrorBody;
    if (typeof b.message === 'string' && b.message) return b.message;
    if (typeof b.error === 'string' && b.error) return b.error;
  }
  if (err instanceof TypeError) return 'The control plane cannot be reached. Check your connection and try again.';
  if (err instanceof Error) return err.message;
  if (typeof err === 'string' && err) return err;
  return status ? `request failed (HTTP ${status})` : 'request failed';
}

interface FetchResult<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** Awaits an openapi-fetch call: its data, or an ApiError carrying the server's message. */
export async function call<T>(p: Promise<FetchResult<T>>): Promise<T> {
  let r: FetchResult<T>;
  try {
    r = await p;
  } catch (err) {
    if (err instanceof DOMException && err.name === 'AbortError') throw err;
    throw new ApiError(errorMessage(err), 0, null, null);
  }
  if (r.error !== undefined || !r.response.ok) {
    const body = (r.error && typeof r.error === 'object' ? r.error : null) as ErrorBody | null;
    throw new ApiError(errorMessage(r.error ?? null, r.response.status), r.response.status, body, r.response);
  }
  return r.data as T;
}

/** Like call(), also giving the response (headers, status). */
export async function callFull<T>(p: Promise<FetchResult<T>>): Promise<{ data: T; response: Response }> {
  let r: FetchResult<T>;
  try {
    r = await p;
  } catch (err) {
    if (err instanceof DOMException && err.name === 'AbortError') throw err;
    throw new ApiError(errorMessage(err), 0, null, null);
  }
  if (r.error !== undefined || !r.response.ok) {
    const body = (r.error && typeof r.error === 'object' ? r.error : null) as ErrorBody | null;
    throw new ApiError(errorMessage(r.error ?? null, r.response.status), r.response.status, body, r.response);
  }
  return { data: r.data as T, response: r.response };
}

export function isAbort(err: unknown): boolean {
  return err instanceof DOMException && err.name === 'AbortError';
}
