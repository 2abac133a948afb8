import { createContext, useCallback, useContext, useEffect, useMemo, useState, type ReactNode } from 'react';
import { api, call, getToken, onSignedOut, setToken } from './api/client';
import { live } from './api/live';

export interface Me {
  id?: string;
  username: string;
  role: string;
}

interface AuthState {
  /** undefined while the stored token is being checked */
  me: Me | null | undefined;
  signedIn(token: string, me: Me): void;
  signOut(): void;
  isAdmin: boolean;
}

const AuthContext = createContext<AuthState | null>(null);
const ME_KEY = 'streamspace.me';

function storedMe(): Me | null {
  try {
    const raw = window.sessionStorage.getItem(ME_KEY);
    return raw ? (JSON.parse(raw) as Me) : null;
  } catch {
    return null;
  }
}

export function AuthProvider({ children }: { children: ReactNode }) {
  const [me, setMe] = useState<Me | null | undefined>(() => (getToken() ? (storedMe() ?? undefined) : null));

  useEffect(() => {
    if (!getToken()) return;
    // The token may have expired or been revoked: the server says who we are (or 401 → /login).
    call(api.GET('/api/v1/auth/me'))
      .then((m) => {
        const next = m as unknown as Me;
        setMe(next);
        window.sessionStorage.setItem(ME_KEY, JSON.stringify(next));
      })
      .catch(() => {
        if (!getToken()) setMe(null);
      });
  }, []);

  useEffect(
    () =>
      onSignedOut(() => {
        live.stop();
        try {
          window.sessionStorage.removeItem(ME_KEY);
        } catch {
          /* ignore */
        }
        setMe(null);
      }),
    [],
  );

  useEffect(() => {
    if (me) live.start();
  }, [me]);

  const signedIn = useCallback((token: string, m: Me) => {
    setToken(token);
    try {
      window.sessionStorage.setItem(ME_KEY, JSON.stringify(m));
    } catch {
      /* ignore */
    }
    setMe(m);
  }, []);

  const signOutNow = useCallback(() => {
    setToken(null);
    live.stop();
    try {
      window.sessionStorage.removeItem(ME_KEY);
    } catch {
      /* ignore */
    }
    setMe(null);
  }, []);

  const value = useMemo<AuthState>(() => ({ me, signedIn, signOut: signOutNow, isAdmin: me?.role === 'admin' }), [me, signedIn, signOutNow]);
  return <AuthContext.Provider value={value}>{children}</AuthContext.Provider>;
}

export function useAuth(): AuthState {
  const v = useContext(AuthContext);
  if (!v) throw new Error('useAuth outside AuthProvider');
  return v;
}
