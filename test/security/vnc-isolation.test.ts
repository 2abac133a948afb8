/**
 * Issue 9, item 3: no desktop without the ticket. Sessions run with host networking on loopback
 * here (the test setup), the weakest isolation the Docker agent offers, so the per-session VncAuth
 * password is the only barrier between sessions: from inside session A's container, session B's
 * VNC port offers VncAuth only and refuses a wrong answer; from the host, a raw RFB client without
 * B's password (or with A's) fails; the viewer's path through the gateway and the agent still gets
 * a desktop with security None, also after the agent restarts (it recovers the password from the
 * Docker API). The desktop runs as uid 1000 with no capabilities. On Kubernetes, the session pod is
 * non-root with every capability dropped, and deploy/kubernetes/network-policy.yaml passes a
 * server-side dry run on a real kube-apiserver.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { RfbClient } from '../../bench/rfb';
import { vncAuthResponse } from '../../agents/common/rfb-auth';
import { loadKubeClient, startKube } from '../harness/kube';
import { ROOT, Stack } from '../harness/stack';

jest.setTimeout(300_000);

/** bash: a loop head running its body for each process named `name` ($p = /proc/<pid>); the image has no procps. */
const pidsOf = (name: string) => `for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = ${name} ] || continue;`;

/**
 * A raw RFB 3.8 client that asks for one security type: None (1), or VncAuth (2) answering the
 * challenge with `password` (all-zero bytes when null). Resolves with what the server said.
 */
async function rawAttempt(port: number, type: 1 | 2, password: string | null): Promise<{ offered: number[]; outcome: string }> {
  const sock = net.connect({ host: '127.0.0.1', port });
  let buf = Buffer.alloc(0);
  let closed = false;
  const waiters: (() => void)[] = [];
  sock.on('data', (d) => ((buf = Buffer.concat([buf, d])), waiters.splice(0).forEach((w) => w())));
  sock.on('close', () => ((closed = true), waiters.splice(0).forEach((w) => w())));
  sock.on('error', () => undefined);
  const read = async (n: number): Promise<Buffer | null> => {
    const deadline = Date.now() + 5000;
    while (buf.length < n && !closed && Date.now() < deadline) await new Promise<void>((r) => (waiters.push(r), setTimeout(r, 200)));
    if (buf.length < n) return null;
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
  try {
    const version = await read(12);
    if (!version) return { offered: [], outcome: 'no greeting' };
    sock.write('RFB 003.008\n');
    const count = (await read(1))?.[0] ?? 0;
    const offered = count ? [...((await read(count)) ?? [])] : [];
    sock.write(Buffer.from([type]));
    if (type === 2) {
      const challenge = await read(16);
      if (!challenge) return { offered, outcome: 'closed' };
      sock.write(password ? vncAuthResponse(password, challenge) : Buffer.alloc(16));
    }
    const result = await read(4);
    if (!result) return { offered, outcome: 'closed' };
    if (result.readUInt32BE(0) !== 0) return { offered, outcome: 'failed' };
    sock.write(Buffer.from([1])); // ClientInit (shared)
    const init = await read(24);
    return { offered, outcome: init ? `desktop ${init.readUInt16BE(0)}x${init.readUInt16BE(2)}` : 'closed' };
  } finally {
    sock.destroy();
  }
}

describe('VNC isolation between sessions (Docker, host networking on loopback)', () => {
  const stack = new Stack('vnc-isolation');
  const AGENT = 'docker-isolation-1';
  let token: string;
  const s: Record<'a' | 'b', { id: string; container: string; port: number; password: string }> = {} as never;

  beforeAll(async () => {
    await stack.start();
    await stack.startDockerAgent(AGENT, { VNC_PORT_RANGE: '15960-15969', HEALTH_PORT: '0' });
    token = await stack.login();
    for (const k of ['a', 'b'] as const) {
      const id = (await stack.call('POST', '/api/v1/sessions', { user: `user-${k}`, template: 'terminal', platform: 'docker' }, token)).body.id;
      await stack.waitForState(token, id, 'running');
      const [c] = await stack.containers(id);
      const info = await stack.docker.getContainer(c.Id).inspect();
      const password = (info.Config.Env ?? []).find((e) => e.startsWith('VNC_PASSWORD='))?.slice('VNC_PASSWORD='.length) ?? '';
      s[k] = { id, container: c.Id, port: Number(c.Labels['io.streamspace.vnc-port']), password };
    }
  });
  afterAll(() => stack.stop());

  test('each session has its own random VNC password, kept out of the logs', async () => {
    expect(s.a.password).toMatch(/^[A-Za-z0-9_-]{8}$/);
    expect(s.b.password).toMatch(/^[A-Za-z0-9_-]{8}$/);
    expect(s.a.password).not.toBe(s.b.password);
    for (const k of ['a', 'b'] as const) {
      const logs = (await stack.docker.getContainer(s[k].container).logs({ stdout: true, stderr: true })).toString('latin1');
      expect(logs).not.toContain(s[k].password);
    }
    for (const file of ['agent-docker-isolation-1.log', 'api.log', 'worker.log'])
      expect(readFileSync(path.join(stack.logDir, file), 'utf8')).not.toMatch(new RegExp(`${s.a.password}|${s.b.password}`));
  });

  test('the desktop is an unprivileged user: uid 1000, no capabilities, no-new-privileges', async () => {
    const info = await stack.docker.getContainer(s.a.container).inspect();
    expect(info.Config.User).toBe('1000:1000');
    expect(info.HostConfig.CapDrop).toEqual(['ALL']);
    expect(info.HostConfig.SecurityOpt).toContain('no-new-privileges');
    // The VNC server's (and so the desktop's) process, as the kernel sees it.
    const status = await stack.exec(s.a.container, `${pidsOf('Xtigervnc')} cat $p/status; done`);
    expect(status).toMatch(/^Name:\s+Xtigervnc$/m);
    expect(status).toMatch(/^Uid:\s+1000\s+1000\s+1000\s+1000$/m);
    expect(status).toMatch(/^CapEff:\s+0+$/m);
    expect(status).toMatch(/^CapBnd:\s+0+$/m);
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
    // The desktop's shell does not inherit the password.
    const xtermEnv = await stack.exec(s.a.container, `${pidsOf('xterm')} tr "\\0" "\\n" <$p/environ; done`);
    expect(xtermEnv).toMatch(/^HOME=/m);
    expect(xtermEnv).not.toMatch(/^VNC_PASSWORD=/m);
  });

  test("from inside session A's container, session B's VNC port offers VncAuth only and refuses None and a wrong answer", async () => {
    // bash's /dev/tcp: version, then the security types (count, types...), then the outcome of
    // asking for None, and of VncAuth answered with zeros (SecurityResult 1 = failed).
    const script = (choice: 1 | 2) => `
      exec 3<>/dev/tcp/127.0.0.1/${s.b.port} || exit 1
      head -c 12 <&3 >/dev/null
      printf 'RFB 003.008\\n' >&3
      echo "types $(head -c 2 <&3 | od -An -tu1)"
      printf '\\x0${choice}' >&3
      ${choice === 2 ? 'head -c 16 <&3 >/dev/null; head -c 16 /dev/zero >&3' : ''}
      echo "result $(timeout 5 head -c 4 <&3 | od -An -tu1)"`;
    const none = await stack.exec(s.a.container, script(1));
    expect(none).toMatch(/^types\s+1\s+2\s*$/m); // exactly one type offered: VncAuth
    expect(none).not.toMatch(/^result\s+0\s+0\s+0\s+0\s*$/m);
    const wrong = await stack.exec(s.a.container, script(2));
    expect(wrong).toMatch(/^result\s+0\s+0\s+0\s+1\s*$/m);
  });

  test("from the host: no password, a wrong password or the other session's password fail; only the session's own password opens it", async () => {
    expect(await rawAttempt(s.b.port, 1, null)).toMatchObject({ offered: [2], outcome: expect.not.stringMatching(/^desktop/) });
    expect(await rawAttempt(s.b.port, 2, null)).toEqual({ offered: [2], outcome: 'failed' });
    expect(await rawAttempt(s.b.port, 2, s.a.password)).toEqual({ offered: [2], outcome: 'failed' });
    // The same client with the right secret gets the desktop: the failures above are the password's doing.
    expect(await rawAttempt(s.b.port, 2, s.b.password)).toEqual({ offered: [2], outcome: 'desktop 1280x800' });
  });

  test('through the gateway (ticket checked) the viewer gets security None and the desktop, also after the agent restarts', async () => {
    const viewer = async (id: string) => {
      const t = await stack.call('POST', `/api/v1/sessions/${id}/vnc-ticket`, {}, token);
      expect(t.status).toBe(201);
      const c = await RfbClient.websocket(`ws://127.0.0.1:${stack.apiPort}${t.body.url}`);
      try {
        return await c.handshake(); // version 3.8, security None, ClientInit, ServerInit
      } finally {
        c.close();
      }
    };
    expect(await viewer(s.a.id)).toMatchObject({ version: 'RFB 003.008', width: 1280, height: 800 });
    expect(await viewer(s.b.id)).toMatchObject({ width: 1280, height: 800 });
    // A new agent process knows no password in memory: it reads it back from the Docker API.
    await stack.agents.get(AGENT)!.kill('SIGKILL');
    await stack.startDockerAgent(AGENT, { VNC_PORT_RANGE: '15960-15969', HEALTH_PORT: '0' });
    expect(await viewer(s.b.id)).toMatchObject({ width: 1280, height: 800 });
  });
});

describe('Kubernetes: session pods are unprivileged and reachable only from agent pods', () => {
  const k8s = loadKubeClient();
  let cluster: Awaited<ReturnType<typeof startKube>>;
  beforeAll(async () => {
    cluster = await startKube();
  });
  afterAll(() => cluster?.stop());

  test('deploy/kubernetes/network-policy.yaml passes a server-side dry run', async () => {
    const kc = new k8s.KubeConfig();
    kc.loadFromString(cluster.kubeconfig());
    await kc.makeApiClient(k8s.CoreV1Api).createNamespace({ body: { metadata: { name: 'streamspace' } } });
    const objects = k8s.KubernetesObjectApi.makeApiClient(kc);
    const manifests = k8s.loadAllYaml(readFileSync(path.join(ROOT, 'deploy/kubernetes/network-policy.yaml'), 'utf8')) as any[];
    expect(manifests.map((m) => m.kind)).toEqual(['NetworkPolicy', 'NetworkPolicy']);
    for (const m of manifests) await objects.create(m, undefined, 'All');
    const ingress = manifests[0].spec;
    expect(ingress.podSelector.matchLabels).toEqual({ 'app.kubernetes.io/managed-by': 'streamspace' });
    // One rule, one peer: the agent's pods (client-node names the field `_from`).
    expect(ingress.ingress).toHaveLength(1);
    const peers = ingress.ingress[0]._from ?? ingress.ingress[0].from;
    expect(peers).toHaveLength(1);
    expect(peers[0].podSelector.matchLabels).toEqual({ app: 'streamspace', component: 'k8s-agent' });
    expect(peers[0].namespaceSelector).toBeUndefined();
    expect(peers[0].ipBlock).toBeUndefined();
  });

  test('the agent creates the session pod non-root, without capabilities, with its own VNC password it can read back', async () => {
    const kc = new k8s.KubeConfig();
    kc.loadFromString(cluster.kubeconfig());
    // The driver from dist/, loaded with Node's require like the client it imports (an ES module).
    const nodeRequire = (process as unknown as { getBuiltinModule: (id: string) => typeof import('node:module') })
      .getBuiltinModule('module')
      .createRequire(path.join(ROOT, 'package.json'));
    const { KubernetesDriver } = nodeRequire(path.join(ROOT, 'dist/agents/kubernetes/driver.js')) as typeof import('../../agents/kubernetes/driver');
    const { createLogger } = nodeRequire(path.join(ROOT, 'dist/config/log.js')) as typeof import('../../config/log');
    await kc
      .makeApiClient(k8s.CoreV1Api)
      .createNamespace({ body: { metadata: { name: 'streamspace-pods' } } })
      .catch(() => undefined);
    const driver = new KubernetesDriver({
      kubeConfig: kc,
      namespace: 'streamspace-pods',
      agentId: 'k8s-isolation',
      homeSize: '1Gi',
      storageClass: null,
      podReadyTimeoutMs: 300, // no kubelet here: the pod never becomes ready
      log: createLogger('k8s-isolation-test'),
    });
    const template = { name: 'desktop', image: 'streamspace/session:local', vnc_port: 5900, env: {}, resources: {}, home_mount: '/config' };
    const data = { user: 'kim', template, persistent_home: true };
    await expect(driver.start('iso-1', data, () => undefined)).rejects.toThrow(/not ready/);
    await expect(driver.start('iso-2', { ...data, user: 'lee' }, () => undefined)).rejects.toThrow(/not ready/);
    const core = kc.makeApiClient(k8s.CoreV1Api);
    const pod = await core.readNamespacedPod({ name: 'ss-iso-1', namespace: 'streamspace-pods' });
    expect(pod.spec!.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, fsGroup: 1000 });
    expect(pod.spec!.containers[0].securityContext).toMatchObject({ allowPrivilegeEscalation: false, privileged: false, capabilities: { drop: ['ALL'] } });
    const p1 = await driver.vncPassword('iso-1');
    const p2 = await driver.vncPassword('iso-2');
    expect(p1).toMatch(/^[A-Za-z0-9_-]{8}$/);
    expect(p2).toMatch(/^[A-Za-z0-9_-]{8}$/);
    expect(p1).not.toBe(p2);
    expect(pod.spec!.containers[0].env).toContainEqual({ name: 'VNC_PASSWORD', value: p1 });
    // The start data kept on the Service (to rebuild the pod on wake) holds no password.
    const svc = await core.readNamespacedService({ name: 'ss-iso-1', namespace: 'streamspace-pods' });
    expect(JSON.stringify(svc.metadata!.annotations)).not.toContain(p1!);
    for (const id of ['iso-1', 'iso-2']) await driver.stop(id, () => undefined);
    expect(await driver.vncPassword('iso-1')).toBeNull();
  });
});
