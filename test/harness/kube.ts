/**
 * A real Kubernetes API for tests: etcd + kube-apiserver (built by scripts/build-k8s.sh from their
 * published Go modules) started envtest-style on 127.0.0.1 with static token authentication and
 * RBAC. There is no kubelet or scheduler: tests play the kubelet by writing pod status through the
 * /status subresource. Logs go to test-artifacts/logs/kube-<id>/.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '..', '..');
const CACHE_BIN = '/var/cache/streamspace/bin';

export interface KubeTokenUser {
  user: string;
  groups?: string[];
}

export interface StartKubeOptions {
  /** Directory for etcd data, certificates and the token file. Kept on stop() when given; a temp dir otherwise. */
  dataDir?: string;
  /** Extra users for the static token file (it cannot change at runtime); their tokens are in cluster.tokens. */
  tokens?: KubeTokenUser[];
  /** Milliseconds to wait for etcd and kube-apiserver to become ready (default 120 s). */
  timeoutMs?: number;
}

export interface KubeCluster {
  /** https://127.0.0.1:<port> */
  server: string;
  /** Bearer token of user `admin` in group system:masters. */
  adminToken: string;
  /** PEM file with the serving certificate chain (the self-generated CA is included). */
  caFile: string;
  /** Always false: the CA above verifies the serving certificate for 127.0.0.1. */
  skipTLSVerify: boolean;
  /** Tokens of the extra users passed in opts.tokens, by user name (admin is included too). */
  tokens: Record<string, string>;
  etcdUrl: string;
  logDir: string;
  /** Kubeconfig YAML for @kubernetes/client-node's KubeConfig.loadFromString. */
  kubeconfig(token?: string): string;
  stop(): Promise<void>;
}

/**
 * @kubernetes/client-node 1.x is an ES module. Jest's CommonJS module system cannot load it, so
 * load it with Node's own require (Node >= 20.19 supports require() of ES modules). Objects it
 * returns belong to the main realm: check errors by their `code`, not with instanceof.
 */
export function loadKubeClient(): typeof import('@kubernetes/client-node') {
  const getBuiltin = (process as unknown as { getBuiltinModule?: (id: string) => unknown }).getBuiltinModule;
  const nodeModule = (getBuiltin ? getBuiltin('module') : require('node:module')) as typeof import('node:module');
  return nodeModule.createRequire(path.join(ROOT, 'package.json'))('@kubernetes/client-node');
}

function findBinary(name: string, envVar: string): string {
  const p = process.env[envVar] || path.join(CACHE_BIN, name);
  if (!existsSync(p)) {
    throw new Error(`${name} binary not found at ${p}: run \`bash scripts/build-k8s.sh\` (builds kube-apiserver and etcd into ${CACHE_BIN}) or set ${envVar}`);
  }
  return p;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

function httpGet(url: string, opts: https.RequestOptions = {}): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const mod = url.startsWith('https:') ? https : http;
    const req = mod.get(url, { ...opts, timeout: 5000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
  });
}

class Server {
  child: ChildProcess;
  exited: Promise<number | null>;
  exitCode: number | null | undefined = undefined;

  constructor(
    readonly name: string,
    bin: string,
    args: string[],
    readonly logFile: string,
  ) {
    const out = createWriteStream(logFile, { flags: 'a' });
    out.write(`--- start ${new Date().toISOString()}\n${bin} ${args.join(' ')}\n`);
    this.child = spawn(bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, GOMAXPROCS: process.env.GOMAXPROCS ?? '2' },
    });
    this.child.stdout!.pipe(out, { end: false });
    this.child.stderr!.pipe(out, { end: false });
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        out.end(`--- exit code=${code} signal=${signal} ${new Date().toISOString()}\n`);
        resolve(code);
      });
      this.child.once('error', (err) => {
        out.write(`--- spawn error: ${err.message}\n`);
      });
    });
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  logTail(lines = 30): string {
    try {
      return readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }

  async stop(timeoutMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), timeoutMs);
    await this.exited;
    clearTimeout(t);
  }
}

async function waitReady(server: Server, what: string, timeoutMs: number, probe: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (!server.running) {
      throw new Error(`${server.name} exited (code ${server.exitCode}) before ${what}; log ${server.logFile}:\n${server.logTail()}`);
    }
    try {
      if (await probe()) return;
    } catch (err) {
      last = (err as Error).message;
    }
    await sleep(200);
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (${last})` : ''}; log ${server.logFile}:\n${server.logTail()}`);
}

/** Children still running, killed if the test process exits without calling stop(). */
const live = new Set<Server>();
let exitHookInstalled = false;
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const s of live) s.child.kill('SIGKILL');
  });
}

export async function startKube(opts: StartKubeOptions = {}): Promise<KubeCluster> {
  const etcdBin = findBinary('etcd', 'ETCD_BIN');
  const apiserverBin = findBinary('kube-apiserver', 'KUBE_APISERVER_BIN');
  const timeoutMs = opts.timeoutMs ?? 120_000;

  const id = `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`;
  const logDir = path.join(ROOT, 'test-artifacts', 'logs', `kube-${id}`);
  mkdirSync(logDir, { recursive: true });
  const ownDir = !opts.dataDir;
  const dir = opts.dataDir ?? mkdtempSync(path.join(os.tmpdir(), 'streamspace-kube-'));
  const etcdDir = path.join(dir, 'etcd');
  const certDir = path.join(dir, 'certs');
  mkdirSync(etcdDir, { recursive: true, mode: 0o700 });
  mkdirSync(certDir, { recursive: true });

  // Static tokens: admin (system:masters) plus the requested users.
  const tokens: Record<string, string> = {};
  const adminToken = `admin-${randomBytes(24).toString('hex')}`;
  tokens.admin = adminToken;
  const csvQuote = (s: string) => `"${s.replace(/"/g, '""')}"`;
  const lines = [`${adminToken},admin,admin-uid,${csvQuote('system:masters')}`];
  for (const [i, t] of (opts.tokens ?? []).entries()) {
    if (!/^[^,"\s]+$/.test(t.user)) throw new Error(`invalid token user name: ${t.user}`);
    if (tokens[t.user]) throw new Error(`duplicate token user: ${t.user}`);
    const tok = `${t.user.replace(/[^A-Za-z0-9]/g, '').slice(0, 16) || 'user'}-${randomBytes(24).toString('hex')}`;
    tokens[t.user] = tok;
    const groups = t.groups?.length ? `,${csvQuote(t.groups.join(','))}` : '';
    lines.push(`${tok},${t.user},uid-${i}-${t.user}${groups}`);
  }
  const tokenFile = path.join(dir, 'tokens.csv');
  writeFileSync(tokenFile, lines.join('\n') + '\n', { mode: 0o600 });

  // Service-account signing key (the apiserver derives the public key from the private key file).
  const saKeyFile = path.join(dir, 'sa.key');
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  writeFileSync(saKeyFile, privateKey.export({ type: 'pkcs1', format: 'pem' }), { mode: 0o600 });

  const [etcdClientPort, etcdPeerPort, securePort] = await Promise.all([freePort(), freePort(), freePort()]);
  const etcdUrl = `http://127.0.0.1:${etcdClientPort}`;
  const peerUrl = `http://127.0.0.1:${etcdPeerPort}`;

  installExitHook();
  const started: Server[] = [];
  const cleanup = async () => {
    for (const s of [...started].reverse()) {
      await s.stop().catch(() => undefined);
      live.delete(s);
    }
    if (ownDir) rmSync(dir, { recursive: true, force: true });
  };

  try {
    const etcd = new Server(
      'etcd',
      etcdBin,
      [
        '--name=default',
        `--data-dir=${etcdDir}`,
        `--listen-client-urls=${etcdUrl}`,
        `--advertise-client-urls=${etcdUrl}`,
        `--listen-peer-urls=${peerUrl}`,
        `--initial-advertise-peer-urls=${peerUrl}`,
        `--initial-cluster=default=${peerUrl}`,
        '--initial-cluster-state=new',
        '--unsafe-no-fsync=true',
        '--log-level=warn',
      ],
      path.join(logDir, 'etcd.log'),
    );
    started.push(etcd);
    live.add(etcd);
    await waitReady(etcd, `etcd health at ${etcdUrl}`, timeoutMs, async () => {
      const r = await httpGet(`${etcdUrl}/health`);
      return r.status === 200 && /"health":\s*"true"/.test(r.body);
    });

    const server = `https://127.0.0.1:${securePort}`;
    const apiserver = new Server(
      'kube-apiserver',
      apiserverBin,
      [
        `--etcd-servers=${etcdUrl}`,
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        // Since 1.37 the lease/master-count reconcilers reject a loopback advertise address; no
        // pods reach the `kubernetes` service here, so do not maintain its endpoints.
        '--endpoint-reconciler-type=none',
        `--secure-port=${securePort}`,
        `--cert-dir=${certDir}`,
        `--token-auth-file=${tokenFile}`,
        '--authorization-mode=RBAC',
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${saKeyFile}`,
        `--service-account-signing-key-file=${saKeyFile}`,
        '--service-cluster-ip-range=127.10.0.0/24', // only an allocation range inside the API server: no traffic goes there
        '--disable-admission-plugins=ServiceAccount',
        '--allow-privileged=true',
        '--anonymous-auth=false',
        '--v=1',
      ],
      path.join(logDir, 'kube-apiserver.log'),
    );
    started.push(apiserver);
    live.add(apiserver);

    // With --cert-dir and no --tls-cert-file the apiserver writes a self-signed CA + serving cert.
    const caFile = path.join(certDir, 'apiserver.crt');
    await waitReady(apiserver, `${server}/readyz`, timeoutMs, async () => {
      if (!existsSync(caFile)) return false;
      const r = await httpGet(`${server}/readyz`, {
        ca: readFileSync(caFile),
        headers: { Authorization: `Bearer ${adminToken}` },
      });
      return r.status === 200 && r.body.trim() === 'ok';
    });
    const caData = readFileSync(caFile).toString('base64');

    const kubeconfig = (token: string = adminToken): string =>
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        '- name: streamspace-test',
        '  cluster:',
        `    server: ${server}`,
        `    certificate-authority-data: ${caData}`,
        'users:',
        '- name: streamspace-test-user',
        '  user:',
        `    token: ${JSON.stringify(token)}`,
        'contexts:',
        '- name: streamspace-test',
        '  context:',
        '    cluster: streamspace-test',
        '    user: streamspace-test-user',
        'current-context: streamspace-test',
        '',
      ].join('\n');

    let stopped: Promise<void> | undefined;
    return {
      server,
      adminToken,
      caFile,
      skipTLSVerify: false,
      tokens,
      etcdUrl,
      logDir,
      kubeconfig,
      stop: () => (stopped ??= cleanup()),
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}
