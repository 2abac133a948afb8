/**
 * Capped exponential backoff with jitter (the "equal jitter" variant): the delay is between half
 * and all of min(max, initial * 2^attempt), so a fleet of agents does not reconnect in lock-step
 * yet every agent retries soon after the control plane is back.
 */
export function backoffDelay(attempt: number, initialMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + random() * (ceiling / 2));
}
