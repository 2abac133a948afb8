/**
 * Account helpers shared by the auth and user routes: token revocation by time (users.
 * tokens_valid_after, compared with the JWT's iat, whole seconds) and the dummy hash that makes a
 * sign-in for an unknown user cost what a known user's does.
 */
import { hashPassword, verifyPassword } from './tokens';

/**
 * The instant from which tokens are valid again after a revocation: the next whole second (iat
 * has second resolution, so every token issued before the change, even in the same second, is
 * older; a new token is signed once this instant has passed).
 */
export function revocationInstant(now = Date.now()): Date {
  return new Date((Math.floor(now / 1000) + 1) * 1000);
}

/** Waits until tokens signed now are not older than `validAfter` (at most about a second). */
export async function waitForTokenValidity(validAfter: Date | null | undefined): Promise<void> {
  const ms = validAfter ? validAfter.getTime() - Date.now() : 0;
  if (ms > 0) await new Promise((r) => setTimeout(r, ms + 5));
}

/** True when a token issued at `iat` (seconds) was revoked by `validAfter`. */
export function tokenRevoked(iat: unknown, validAfter: Date | null | undefined): boolean {
  if (!validAfter) return false;
  return typeof iat !== 'number' || iat * 1000 < validAfter.getTime();
}

let dummy: Promise<string> | null = null;
/**
 * Checks a password for a user that may not exist: with no stored hash the password is checked
 * against a dummy scrypt hash, so the answer takes as long as for a real user.
 */
export async function verifyPasswordConstantTime(password: string, stored: string | null | undefined): Promise<boolean> {
  if (stored) return verifyPassword(password, stored);
  dummy ??= hashPassword('streamspace-dummy-password-for-timing');
  await verifyPassword(password, await dummy);
  return false;
}
