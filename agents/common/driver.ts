/**
 * The platform driver interface (after JupyterHub's spawner: start / stop / poll). One
 * implementation per platform lives in agents/<platform>/. Every method is idempotent: a command
 * may be delivered again after an agent or control-plane restart, and must converge on the same
 * outcome without creating a second container or pod.
 */
import type { CommandResult, Platform, ReportedSession, StartSessionData, VncEndpoint } from '../../protocol/messages';

export type Progress = (message: string) => void;

/**
 * What a driver learns about the command it runs: the session's command generation (drivers that
 * create something record it, e.g. as a label, so "created twice" is countable per generation)
 * and a signal that fires when the control plane abandons the command (check it before each
 * irreversible step: an abandoned start must not create anything it has not created yet).
 */
export interface CommandContext {
  generation: number;
  signal: AbortSignal;
  /** Epoch ms (agent clock): past it the command must not take another irreversible step. */
  deadline: number;
}

/** True when the command may not take its next irreversible step: abandoned, or past its deadline. */
export function mustNotProceed(ctx?: CommandContext): boolean {
  return !!ctx && (ctx.signal.aborted || Date.now() > ctx.deadline);
}

export interface SessionDriver {
  readonly platform: Platform;
  /** Connects to the platform (Docker daemon, API server); throws if unreachable. */
  init(): Promise<void>;
  /** Creates (if absent) and starts the session; resolves once its VNC server accepts connections. */
  start(sessionId: string, data: StartSessionData, progress: Progress, ctx?: CommandContext): Promise<CommandResult>;
  /** Releases compute but keeps the home volume. Already hibernated is success. */
  hibernate(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult>;
  /** Starts a hibernated session again; resolves once VNC accepts connections. */
  wake(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult>;
  /** Removes the session's compute (container/pod); keeps the home volume. Already gone is success. */
  stop(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult>;
  /** What this agent actually runs, for reconciliation on (re)connect. */
  list(): Promise<ReportedSession[]>;
  /** Where the agent reaches the session's VNC server, for the tunnel. */
  vncEndpoint(sessionId: string): Promise<VncEndpoint>;
  close(): Promise<void>;
}

/** A failure the driver can classify: retryable=false means retrying the command cannot help. */
export class DriverError extends Error {
  /** Thrown when a command was abandoned (or expired) before an irreversible step. */
  static abandoned(what: string, ctx?: CommandContext): DriverError {
    const why = ctx && !ctx.signal.aborted ? 'expired' : 'abandoned by the control plane';
    return new DriverError(`${why} before ${what}`, false);
  }

  constructor(
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = 'DriverError';
  }
}
