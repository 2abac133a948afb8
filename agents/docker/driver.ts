/**
 * Docker platform driver: one container per session from the template's image, labelled with
 * session, user, template and agent; a named volume per user for the home directory that
 * survives stop and hibernate. Hibernate stops the container, wake starts it, stop removes it.
 *
 * Networking: DOCKER_NETWORK=host (tests, single host: each session gets its own VNC port from
 * VNC_PORT_RANGE on VNC_LISTEN) or a bridge network (default "<NETWORK_PREFIX>", created if
 * absent; the agent reaches the session at the container's address on the template's port).
 *
 * Isolation: every session's VNC server demands VncAuth with a random password generated here at
 * create time and handed to the container in its environment (VNC_PASSWORD), which only the Docker
 * API reveals; the agent reads it back from there (so it survives an agent restart) and completes
 * the RFB handshake itself (agents/common/tunnel.ts). The desktop runs as an unprivileged user
 * (SESSION_USER, 1000:1000) with every capability dropped and no-new-privileges.
 */
import Docker from 'dockerode';
import net from 'node:net';
import type { Logger } from '../../config/log';
import type { CommandResult, ReportedSession, StartSessionData, VncEndpoint } from '../../protocol/messages';
import { CommandContext, DriverError, mustNotProceed, Progress, SessionDriver } from '../common/driver';
import { generateVncPassword, VNC_PASSWORD_ENV, VncSecretSource } from '../common/rfb-auth';

/** uid:gid the desktop runs as (the session image's "streamspace" user); never root. */
export const SESSION_USER = '1000:1000';

export interface DockerDriverOptions {
  agentId: string;
  /** DOCKER_HOST: unix:///var/run/docker.sock or tcp://127.0.0.1:2375. */
  dockerHost: string;
  networkPrefix: string;
  /** "host", or the name of a bridge network (default: networkPrefix). */
  network: string;
  vncPortRange: [number, number];
  vncListen: string;
  vncReadyTimeoutMs: number;
  stopTimeoutSeconds: number;
  maxSessions: number;
  log: Logger;
}

const LABEL = {
  managed: 'io.streamspace.managed',
  session: 'io.streamspace.session-id',
  user: 'io.streamspace.user',
  template: 'io.streamspace.template',
  agent: 'io.streamspace.agent-id',
  vncPort: 'io.streamspace.vnc-port',
  /** The command generation that created the container: "created twice" is countable per generation. */
  generation: 'io.streamspace.generation',
};

export class DockerDriver implements SessionDriver, VncSecretSource {
  readonly platform = 'docker' as const;
  private readonly docker: Docker;
  /** Serialises port allocation and creation, so two starts never pick the same VNC port. */
  private createLock: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: DockerDriverOptions) {
    this.docker = new Docker(dockerConnection(o.dockerHost));
  }

  async init(): Promise<void> {
    try {
      await this.docker.ping();
    } catch (err) {
      throw new Error(`cannot reach the Docker daemon at ${this.o.dockerHost}: ${(err as Error).message}`);
    }
    if (this.o.network !== 'host') await this.ensureNetwork();
    this.o.log.info('Connected to Docker daemon', { host: this.o.dockerHost, network: this.o.network });
  }

  async close(): Promise<void> {
    // dockerode keeps no persistent connection
  }

  containerName(sessionId: string): string {
    return `ss-${sessionId.toLowerCase().replace(/[^a-z0-9_.-]/g, '-')}`;
  }

  /** The session's home volume: the one the control plane names (an imported v1 session's), else one per user. */
  homeVolume(data: Pick<StartSessionData, 'user' | 'home_volume'>): string {
    return data.home_volume ?? `${this.o.networkPrefix}-home-${data.user.toLowerCase().replace(/[^a-z0-9_.-]/g, '-')}`;
  }

  async start(sessionId: string, data: StartSessionData, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    let info = await this.inspect(sessionId);
    if (!info) {
      info = await this.exclusive(async () => {
        const again = await this.inspect(sessionId);
        if (again) return again;
        const running = (await this.managed()).filter((c) => c.State === 'running').length;
        // Retryable: the control plane reserves capacity, so this only happens while containers
        // it does not know about (being removed, left by a crash) still run.
        if (running >= this.o.maxSessions) throw new DriverError(`agent ${this.o.agentId} is at capacity (${running}/${this.o.maxSessions} sessions)`, true);
        await this.ensureImage(data.template.image, progress);
        if (mustNotProceed(ctx)) throw DriverError.abandoned('creating the container', ctx);
        progress('creating container');
        return this.create(sessionId, data, ctx?.generation ?? 0);
      });
    }
    if (mustNotProceed(ctx) && !info.State.Running) throw DriverError.abandoned('starting the container', ctx);
    if (!info.State.Running) {
      progress('starting container');
      await this.startContainer(sessionId);
    }
    return this.running(sessionId, progress);
  }

  async hibernate(sessionId: string, progress: Progress): Promise<CommandResult> {
    const info = await this.inspect(sessionId);
    if (!info) throw new DriverError(`session ${sessionId} has no container on agent ${this.o.agentId}`, false);
    if (info.State.Running) {
      progress('stopping container (home volume kept)');
      await this.docker
        .getContainer(info.Id)
        .stop({ t: this.o.stopTimeoutSeconds })
        .catch((err: { statusCode?: number }) => {
          if (err.statusCode !== 304) throw err; // 304: already stopped
        });
    }
    return { state: 'hibernated', platform_metadata: { container_id: info.Id, container_name: info.Name.replace(/^\//, '') } };
  }

  async wake(sessionId: string, progress: Progress, ctx?: CommandContext): Promise<CommandResult> {
    const info = await this.inspect(sessionId);
    if (!info) throw new DriverError(`session ${sessionId} has no container on agent ${this.o.agentId}`, false);
    if (!info.State.Running) {
      if (mustNotProceed(ctx)) throw DriverError.abandoned('starting the container', ctx);
      progress('starting container');
      await this.startContainer(sessionId);
    }
    return this.running(sessionId, progress);
  }

  async stop(sessionId: string, progress: Progress): Promise<CommandResult> {
    const info = await this.inspect(sessionId);
    if (info) {
      progress('removing container (home volume kept)');
      await this.docker
        .getContainer(info.Id)
        .remove({ force: true })
        .catch((err: { statusCode?: number }) => {
          if (err.statusCode !== 404 && err.statusCode !== 409) throw err;
        });
    }
    return { state: 'terminated', platform_metadata: {} };
  }

  async list(): Promise<ReportedSession[]> {
    const containers = await this.managed();
    return containers.map((c) => ({
      session_id: c.Labels[LABEL.session],
      state: c.State === 'running' ? 'running' : c.State === 'created' || c.State === 'restarting' ? 'starting' : 'hibernated',
      metadata: { container_id: c.Id, status: c.Status },
    }));
  }

  async vncEndpoint(sessionId: string): Promise<VncEndpoint> {
    const info = await this.inspect(sessionId);
    if (!info) throw new DriverError(`session ${sessionId} has no container on agent ${this.o.agentId}`, false);
    if (!info.State.Running) throw new DriverError(`session ${sessionId} is not running`, false);
    return this.endpointOf(info);
  }

  /** The session's VNC password, from the container's environment (readable only through the Docker API). */
  async vncPassword(sessionId: string): Promise<string | null> {
    const info = await this.inspect(sessionId);
    return info ? passwordOf(info) : null;
  }

  // ------------------------------------------------------------------ internals

  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.createLock.then(fn, fn);
    this.createLock = run.catch(() => undefined);
    return run;
  }

  private async inspect(sessionId: string): Promise<Docker.ContainerInspectInfo | null> {
    try {
      return await this.docker.getContainer(this.containerName(sessionId)).inspect();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return null;
      throw err;
    }
  }

  private managed(): Promise<Docker.ContainerInfo[]> {
    return this.docker.listContainers({
      all: true,
      filters: { label: [`${LABEL.managed}=true`, `${LABEL.agent}=${this.o.agentId}`] },
    });
  }

  private async ensureImage(image: string, progress: Progress): Promise<void> {
    try {
      await this.docker.getImage(image).inspect();
      return;
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode !== 404) throw err;
    }
    progress(`pulling image ${image}`);
    try {
      const stream = await this.docker.pull(image);
      await new Promise<void>((resolve, reject) => this.docker.modem.followProgress(stream, (e: Error | null) => (e ? reject(e) : resolve())));
    } catch (err) {
      throw new DriverError(`image ${image} is not present and could not be pulled: ${(err as Error).message}`, false);
    }
  }

  private async ensureNetwork(): Promise<void> {
    const nets = await this.docker.listNetworks({ filters: { name: [this.o.network] } });
    if (nets.some((n) => n.Name === this.o.network)) return;
    await this.docker.createNetwork({ Name: this.o.network, Driver: 'bridge', Labels: { [LABEL.managed]: 'true' } }).catch((err) => {
      if ((err as { statusCode?: number }).statusCode !== 409) throw err;
    });
  }

  private async allocatePort(): Promise<number> {
    const used = new Set((await this.docker.listContainers({ all: true, filters: { label: [LABEL.vncPort] } })).map((c) => Number(c.Labels[LABEL.vncPort])));
    for (let p = this.o.vncPortRange[0]; p <= this.o.vncPortRange[1]; p++) {
      if (!used.has(p) && (await portFree(this.o.vncListen, p))) return p;
    }
    throw new DriverError(`no free VNC port in ${this.o.vncPortRange.join('-')}`, true);
  }

  private async create(sessionId: string, data: StartSessionData, generation: number): Promise<Docker.ContainerInspectInfo> {
    const t = data.template;
    const host = this.o.network === 'host';
    const port = host ? await this.allocatePort() : t.vnc_port;
    const env: Record<string, string> = {
      ...t.env,
      HOME: t.home_mount,
      VNC_PORT: String(port),
      STREAMSPACE_SESSION_ID: sessionId,
      STREAMSPACE_USER: data.user,
      [VNC_PASSWORD_ENV]: generateVncPassword(),
    };
    if (host) {
      env.VNC_LISTEN = this.o.vncListen;
      // Sessions share the host's network namespace, so each needs its own X display number.
      // Derived from the port (unique on this host), not from this agent's range: several
      // agents may share one host.
      env.VNC_DISPLAY = String(port);
    }
    const volume = data.persistent_home ? this.homeVolume(data) : null;
    if (volume) {
      await this.docker.createVolume({ Name: volume, Labels: { [LABEL.managed]: 'true', [LABEL.user]: data.user } }).catch((err) => {
        if ((err as { statusCode?: number }).statusCode !== 409) throw err;
      });
    }
    try {
      const c = await this.docker.createContainer({
        name: this.containerName(sessionId),
        Image: t.image,
        Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
        Labels: {
          [LABEL.managed]: 'true',
          [LABEL.session]: sessionId,
          [LABEL.user]: data.user,
          [LABEL.template]: t.name,
          [LABEL.agent]: this.o.agentId,
          [LABEL.vncPort]: String(port),
          [LABEL.generation]: String(generation),
        },
        HostConfig: {
          NetworkMode: host ? 'host' : this.o.network,
          Binds: volume ? [`${volume}:${t.home_mount}`] : [],
          Memory: t.resources.memory ? memoryBytes(t.resources.memory) : undefined,
          NanoCpus: t.resources.cpu ? nanoCpus(t.resources.cpu) : undefined,
          RestartPolicy: { Name: 'no' },
          // The desktop is an ordinary user's: no root, no capabilities, no setuid escalation.
          CapDrop: ['ALL'],
          SecurityOpt: ['no-new-privileges'],
        },
        User: SESSION_USER,
      });
      return await c.inspect();
    } catch (err) {
      const e = err as { statusCode?: number; message: string };
      if (e.statusCode === 409) {
        const existing = await this.inspect(sessionId); // created concurrently by a re-delivered command
        if (existing) return existing;
      }
      throw new DriverError(`cannot create container for session ${sessionId}: ${e.message}`, e.statusCode !== 400);
    }
  }

  private async startContainer(sessionId: string): Promise<void> {
    try {
      await this.docker.getContainer(this.containerName(sessionId)).start();
    } catch (err) {
      const e = err as { statusCode?: number; message: string };
      if (e.statusCode !== 304) throw new DriverError(`cannot start container: ${e.message}`, true);
    }
  }

  private endpointOf(info: Docker.ContainerInspectInfo): VncEndpoint {
    const port = Number(info.Config.Labels[LABEL.vncPort]);
    if (this.o.network === 'host') return { host: this.o.vncListen === '0.0.0.0' ? '127.0.0.1' : this.o.vncListen, port };
    const ip = info.NetworkSettings.Networks[this.o.network]?.IPAddress;
    if (!ip) throw new DriverError(`container has no address on network ${this.o.network}`, true);
    return { host: ip, port };
  }

  /** Waits until the session's VNC server greets with "RFB ", i.e. the desktop is usable. */
  private async running(sessionId: string, progress: Progress): Promise<CommandResult> {
    progress('waiting for the VNC server');
    const deadline = Date.now() + this.o.vncReadyTimeoutMs;
    let lastError = 'no answer';
    for (;;) {
      const info = await this.inspect(sessionId);
      if (!info) throw new DriverError(`container of session ${sessionId} disappeared while starting`, true);
      if (!info.State.Running && info.State.Status === 'exited')
        throw new DriverError(`session container exited with code ${info.State.ExitCode} while starting`, true);
      const endpoint = this.endpointOf(info);
      try {
        await rfbGreeting(endpoint, 1000);
        return {
          state: 'running',
          vnc: endpoint,
          platform_metadata: {
            container_id: info.Id,
            container_name: info.Name.replace(/^\//, ''),
            image: info.Config.Image,
            network: this.o.network,
            home_volume: info.HostConfig.Binds?.[0]?.split(':')[0] ?? null,
          },
        };
      } catch (err) {
        lastError = (err as Error).message;
      }
      if (Date.now() > deadline)
        throw new DriverError(`VNC server of session ${sessionId} did not answer within ${this.o.vncReadyTimeoutMs} ms (${lastError})`, true);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function passwordOf(info: Docker.ContainerInspectInfo): string | null {
  const prefix = `${VNC_PASSWORD_ENV}=`;
  const entry = (info.Config.Env ?? []).find((e) => e.startsWith(prefix));
  return entry ? entry.slice(prefix.length) : null;
}

function dockerConnection(dockerHost: string): Docker.DockerOptions {
  if (dockerHost.startsWith('unix://')) return { socketPath: dockerHost.slice('unix://'.length) };
  const u = new URL(dockerHost.replace(/^tcp:/, 'http:'));
  return { host: u.hostname, port: Number(u.port || 2375), protocol: 'http' };
}

function portFree(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, host, () => srv.close(() => resolve(true)));
  });
}

/** Connects, reads the 12-byte RFB version greeting, and hangs up. */
export function rfbGreeting(ep: VncEndpoint, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = net.connect(ep.port, ep.host);
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => done(new Error('timed out waiting for the RFB greeting')), timeoutMs);
    const done = (err: Error | null, v?: string) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(v!);
    };
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 12) {
        const greeting = buf.subarray(0, 12).toString('latin1');
        if (greeting.startsWith('RFB ')) done(null, greeting);
        else done(new Error(`not a VNC server (said ${JSON.stringify(greeting)})`));
      }
    });
    sock.on('error', (e) => done(e));
    sock.on('close', () => done(new Error('closed before the RFB greeting')));
  });
}

const MEM_UNITS: Record<string, number> = { '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 };
export function memoryBytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|K|M|G|T)?$/.exec(q);
  if (!m) throw new DriverError(`invalid memory quantity "${q}"`, false);
  return Math.round(Number(m[1]) * MEM_UNITS[m[2] ?? '']);
}
export function nanoCpus(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(m)?$/.exec(q);
  if (!m) throw new DriverError(`invalid cpu quantity "${q}"`, false);
  return Math.round(Number(m[1]) * (m[2] ? 1e6 : 1e9));
}
