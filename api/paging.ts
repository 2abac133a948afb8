/** Keyset-paging cursors of the list routes (sessions, audit): opaque base64url JSON, checked on the way back. */
import { HttpError } from './errors';

export function encodeCursor(c: object): string {
  return Buffer.from(JSON.stringify(c)).toString('base64url');
}

/** The cursor a list route issued, or a 400 when `valid` refuses what came back. */
export function decodeCursor<T>(raw: string, valid: (c: T) => boolean): T {
  try {
    const c = JSON.parse(Buffer.from(raw, 'base64url').toString('utf8')) as T;
    if (c && typeof c === 'object' && valid(c)) return c;
  } catch {
    // fall through
  }
  throw new HttpError(400, 'cursor is not one this API issued (take it from the x-next-cursor header)');
}
