/**
 * Issue 11, item 6: Temporal connection options from the environment (config/temporal.ts) and the
 * explicit setup step (db/temporal-setup.ts, `npm run temporal:setup`).
 *
 * The dev server has no TLS flags, so TLS is tested for real through a TLS-terminating proxy on
 * 127.0.0.1 (its own CA, server and client certificates made with openssl; ALPN h2) in front of the
 * plaintext dev server: the client's Connection and the worker's NativeConnection both connect with
 * TLS, with a server name override, and with mTLS (the proxy demands a client certificate).
 */
import { execFile, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { temporalConnectionOptions, temporalSettings } from '../config/temporal';
import { requiredSearchAttributes } from '../db/temporal-setup';
import { TEST_ENV } from './harness/env';
import { ROOT } from './harness/stack';

const run = promisify(execFile);
const CERT = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
const KEY = '-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n';

/** A fake file system for option building. */
function files(map: Record<string, string>) {
  return (p: string): Buffer => {
    if (!(p in map)) throw Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' });
    return Buffer.from(map[p]);
  };
}

describe('config/temporal.ts builds connection options from the environment', () => {
  const fs = files({ '/ca.pem': CERT, '/crt.pem': CERT, '/key.pem': KEY, '/not-pem': 'hello', '/apikey': '  key-from-file\n', '/empty': '\n' });
  const build = (env: NodeJS.ProcessEnv) => temporalConnectionOptions(env, fs);

  test('plaintext by default, at TEMPORAL_ADDRESS', () => {
    expect(build({})).toEqual({ address: '127.0.0.1:57233' });
    expect(build({ TEMPORAL_ADDRESS: 'temporal:7233', TEMPORAL_TLS: 'false' })).toEqual({ address: 'temporal:7233' });
    expect(temporalSettings({ TEMPORAL_NAMESPACE: 'ns' }, fs)).toMatchObject({ namespace: 'ns', description: '127.0.0.1:57233 (plaintext)' });
  });

  test('TLS: on by TEMPORAL_TLS=true or by any TLS setting; CA, server name, client certificate', () => {
    expect(build({ TEMPORAL_TLS: 'true' })).toEqual({ address: '127.0.0.1:57233', tls: {} });
    expect(build({ TEMPORAL_TLS_CA_FILE: '/ca.pem' })).toEqual({ address: '127.0.0.1:57233', tls: { serverRootCACertificate: Buffer.from(CERT) } });
    expect(build({ TEMPORAL_TLS_SERVER_NAME: 'temporal.internal' })).toEqual({ address: '127.0.0.1:57233', tls: { serverNameOverride: 'temporal.internal' } });
    const mtls = temporalSettings(
      { TEMPORAL_ADDRESS: 'h:7233', TEMPORAL_TLS_CERT_FILE: '/crt.pem', TEMPORAL_TLS_KEY_FILE: '/key.pem', TEMPORAL_TLS_CA_FILE: '/ca.pem' },
      fs,
    );
    expect(mtls.connection).toEqual({
      address: 'h:7233',
      tls: { serverRootCACertificate: Buffer.from(CERT), clientCertPair: { crt: Buffer.from(CERT), key: Buffer.from(KEY) } },
    });
    expect(mtls.description).toBe('h:7233 (TLS, own CA, client certificate)');
  });

  test('API key (Temporal Cloud) implies TLS; from the variable or a file; never in the description', () => {
    expect(build({ TEMPORAL_API_KEY: 'secret-key' })).toEqual({ address: '127.0.0.1:57233', tls: {}, apiKey: 'secret-key' });
    expect(build({ TEMPORAL_API_KEY_FILE: '/apikey', TEMPORAL_TLS: 'true' })).toEqual({ address: '127.0.0.1:57233', tls: {}, apiKey: 'key-from-file' });
    const s = temporalSettings({ TEMPORAL_API_KEY: 'secret-key' }, fs);
    expect(s.description).toBe('127.0.0.1:57233 (TLS, API key)');
    expect(s.description).not.toContain('secret-key');
  });

  test.each([
    [{ TEMPORAL_TLS_CERT_FILE: '/crt.pem' }, /TEMPORAL_TLS_CERT_FILE is set but TEMPORAL_TLS_KEY_FILE is not/],
    [{ TEMPORAL_TLS_KEY_FILE: '/key.pem' }, /TEMPORAL_TLS_KEY_FILE is set but TEMPORAL_TLS_CERT_FILE is not/],
    [{ TEMPORAL_API_KEY: 'k', TEMPORAL_TLS: 'false' }, /TEMPORAL_API_KEY needs TLS/],
    [{ TEMPORAL_TLS: 'false', TEMPORAL_TLS_CA_FILE: '/ca.pem' }, /TEMPORAL_TLS=false but TEMPORAL_TLS_CA_FILE is set/],
    [{ TEMPORAL_TLS: 'maybe' }, /TEMPORAL_TLS: "maybe" is not a boolean/],
    [{ TEMPORAL_TLS_CA_FILE: '/nope.pem' }, /TEMPORAL_TLS_CA_FILE: cannot read \/nope.pem \(ENOENT\)/],
    [{ TEMPORAL_TLS_CA_FILE: '/not-pem' }, /TEMPORAL_TLS_CA_FILE: \/not-pem is not a PEM certificate/],
    [{ TEMPORAL_TLS_CERT_FILE: '/crt.pem', TEMPORAL_TLS_KEY_FILE: '/crt.pem' }, /TEMPORAL_TLS_KEY_FILE: \/crt.pem is not a PEM private key/],
    [{ TEMPORAL_API_KEY: 'k', TEMPORAL_API_KEY_FILE: '/apikey' }, /both set: use one/],
    [{ TEMPORAL_API_KEY_FILE: '/empty' }, /TEMPORAL_API_KEY_FILE: \/empty is empty/],
  ])('refuses %j', (env, message) => {
    expect(() => build(env)).toThrow(message);
  });
});

describe('TLS and mTLS for real, through a TLS proxy in front of the dev server', () => {
  const dir = path.join(ROOT, 'test-artifacts', `temporal-tls-${randomBytes(4).toString('hex')}`);
  const f = (name: string) => path.join(dir, name);
  const servers: tls.Server[] = [];
  const sockets = new Set<net.Socket>();
  const upstream = (() => {
    const [host, port] = TEST_ENV.temporalAddress.split(':');
    return { host, port: Number(port) };
  })();

  beforeAll(() => {
    mkdirSync(dir, { recursive: true });
    const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    const key = (name: string) => ssl('genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', name);
    key('ca.key');
    ssl(
      'req',
      '-x509',
      '-new',
      '-key',
      'ca.key',
      '-days',
      '2',
      '-subj',
      '/CN=streamspace test CA',
      '-out',
      'ca.pem',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    );
    const leaf = (name: string, cn: string, ext: string) => {
      key(`${name}.key`);
      ssl('req', '-new', '-key', `${name}.key`, '-subj', `/CN=${cn}`, '-out', `${name}.csr`);
      writeFileSync(f(`${name}.ext`), ext);
      ssl(
        'x509',
        '-req',
        '-in',
        `${name}.csr`,
        '-CA',
        'ca.pem',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-days',
        '2',
        '-extfile',
        `${name}.ext`,
        '-out',
        `${name}.pem`,
      );
    };
    // Valid for 127.0.0.1; and one valid only for a DNS name (for TEMPORAL_TLS_SERVER_NAME).
    leaf('server-ip', '127.0.0.1', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
    leaf('server-dns', 'temporal.streamspace.test', 'subjectAltName=DNS:temporal.streamspace.test\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n');
    leaf('client', 'streamspace-worker', 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n');
  });

  afterAll(async () => {
    for (const s of sockets) s.destroy();
    for (const s of servers) await new Promise<void>((r) => s.close(() => r()));
  });

  /** A TLS server on 127.0.0.1 piping each connection to the plaintext dev server (gRPC is HTTP/2 either way). */
  async function proxy(cert: string, requireClientCert: boolean): Promise<string> {
    const server = tls.createServer(
      {
        key: readFileSync(f(`${cert}.key`)),
        cert: readFileSync(f(`${cert}.pem`)),
        ca: readFileSync(f('ca.pem')),
        requestCert: requireClientCert,
        rejectUnauthorized: requireClientCert,
        ALPNProtocols: ['h2'],
      },
      (client) => {
        const up = net.connect(upstream.port, upstream.host);
        sockets.add(client).add(up);
        client.pipe(up).pipe(client);
        const close = () => {
          client.destroy();
          up.destroy();
        };
        client.on('error', close);
        up.on('error', close);
      },
    );
    server.on('tlsClientError', () => undefined);
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return `127.0.0.1:${(server.address() as net.AddressInfo).port}`;
  }

  /** Connects the client and the worker connection with the env's options; '' or the error. */
  async function tryBoth(env: NodeJS.ProcessEnv): Promise<{ client: string; native: string }> {
    const options = temporalConnectionOptions(env);
    const client = await Connection.connect({ ...options, connectTimeout: 5000 })
      .then(async (c) => {
        await c.workflowService.getSystemInfo({});
        await c.close();
        return '';
      })
      .catch((e: Error) => e.message || String(e));
    const native = await NativeConnection.connect(options)
      .then(async (c) => {
        await c.close();
        return '';
      })
      .catch((e: Error) => e.message || String(e));
    return { client, native };
  }

  test('TLS with our CA: both connect; without the CA (system roots) both refuse the server', async () => {
    const address = await proxy('server-ip', false);
    expect(await tryBoth({ TEMPORAL_ADDRESS: address, TEMPORAL_TLS_CA_FILE: f('ca.pem') })).toEqual({ client: '', native: '' });
    const untrusted = await tryBoth({ TEMPORAL_ADDRESS: address, TEMPORAL_TLS: 'true' });
    expect(untrusted.client).not.toBe('');
    expect(untrusted.native).not.toBe('');
    // And plaintext to a TLS port fails: the options really switch TLS on and off.
    const plain = await tryBoth({ TEMPORAL_ADDRESS: address });
    expect(plain.client).not.toBe('');
  });

  test('TEMPORAL_TLS_SERVER_NAME: a certificate for a DNS name, reached by IP', async () => {
    const address = await proxy('server-dns', false);
    expect(await tryBoth({ TEMPORAL_ADDRESS: address, TEMPORAL_TLS_CA_FILE: f('ca.pem'), TEMPORAL_TLS_SERVER_NAME: 'temporal.streamspace.test' })).toEqual({
      client: '',
      native: '',
    });
    const wrongName = await tryBoth({ TEMPORAL_ADDRESS: address, TEMPORAL_TLS_CA_FILE: f('ca.pem') });
    expect(wrongName.client).not.toBe('');
    expect(wrongName.native).not.toBe('');
  });

  test('mTLS: the server demands a client certificate; with TEMPORAL_TLS_CERT_FILE/KEY_FILE both connect', async () => {
    const address = await proxy('server-ip', true);
    expect(
      await tryBoth({
        TEMPORAL_ADDRESS: address,
        TEMPORAL_TLS_CA_FILE: f('ca.pem'),
        TEMPORAL_TLS_CERT_FILE: f('client.pem'),
        TEMPORAL_TLS_KEY_FILE: f('client.key'),
      }),
    ).toEqual({ client: '', native: '' });
    const noCert = await tryBoth({ TEMPORAL_ADDRESS: address, TEMPORAL_TLS_CA_FILE: f('ca.pem') });
    expect(noCert.client).not.toBe('');
    expect(noCert.native).not.toBe('');
  });
});

describe('npm run temporal:setup (db/temporal-setup.ts) against the dev server', () => {
  const namespace = `ss-setup-${randomBytes(4).toString('hex')}`;

  afterAll(async () => {
    const c = await Connection.connect({ address: TEST_ENV.temporalAddress });
    await c.operatorService.deleteNamespace({ namespace }).catch(() => undefined);
    await c.close();
  });

  const setup = async (env: NodeJS.ProcessEnv) => {
    try {
      const r = await run(process.execPath, [path.join(ROOT, 'dist', 'db', 'temporal-setup.js')], {
        env: { ...process.env, TEMPORAL_ADDRESS: TEST_ENV.temporalAddress, TEMPORAL_NAMESPACE: namespace, TEMPORAL_SETUP_WAIT: '10s', ...env },
        timeout: 90_000,
      });
      return { code: 0, out: r.stdout + r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, out: e.stdout + e.stderr };
    }
  };

  test('registers a fresh namespace and the search attributes; the second run changes nothing', async () => {
    const first = await setup({ TEMPORAL_NAMESPACE_RETENTION: '3d' });
    expect(first).toEqual({ code: 0, out: expect.stringMatching(/namespace ss-setup-\w+: registered \(retention 72h\)/) });
    expect(first.out).toMatch(
      /search attributes: added StreamSpaceSessionId, StreamSpaceUser, StreamSpacePlatform, StreamSpaceAgent, StreamSpaceState, StreamSpaceMigrationPhase/,
    );

    const c = await Connection.connect({ address: TEST_ENV.temporalAddress });
    try {
      const ns = await c.workflowService.describeNamespace({ namespace });
      expect(Number(ns.config?.workflowExecutionRetentionTtl?.seconds)).toBe(3 * 86400);
      const listed = await c.operatorService.listSearchAttributes({ namespace });
      expect(listed.customAttributes).toMatchObject(requiredSearchAttributes());
    } finally {
      await c.close();
    }

    const second = await setup({});
    expect(second.code).toBe(0);
    expect(second.out).toMatch(/namespace ss-setup-\w+: exists/);
    expect(second.out).toMatch(/search attributes: all 6 present/);
  });

  test('fails with the reason when the server is not there, or the TLS settings are half done', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = net.createServer().listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    const down = await setup({ TEMPORAL_ADDRESS: `127.0.0.1:${port}`, TEMPORAL_SETUP_WAIT: '2s' });
    expect(down.code).toBe(1);
    expect(down.out).toMatch(/temporal:setup failed: Temporal at 127.0.0.1:\d+ did not answer within 2s/);
    const half = await setup({ TEMPORAL_TLS_CERT_FILE: '/tmp/x.pem' });
    expect(half.code).toBe(1);
    expect(half.out).toMatch(/temporal:setup failed: TEMPORAL_TLS_CERT_FILE is set but TEMPORAL_TLS_KEY_FILE is not/);
  });
});
