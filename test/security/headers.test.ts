/**
 * Issue 9, headers: every page and answer of the gateway carries a Content-Security-Policy and the
 * usual security headers; the viewer page's policy allows only its own script, its own stylesheet
 * (by hash) and same-origin connections. In Chromium the viewer signs in, draws the desktop with
 * no CSP violation, and keeps the user token in sessionStorage, never in localStorage.
 */
import { createHash } from 'node:crypto';
import { Browser, chromium } from 'playwright-core';
import { Stack, waitFor } from '../harness/stack';

jest.setTimeout(240_000);

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

const EXPECTED: Record<string, RegExp> = {
  'content-security-policy': /default-src 'none'.*frame-ancestors 'none'/,
  'x-content-type-options': /^nosniff$/,
  'x-frame-options': /^DENY$/,
  'referrer-policy': /^no-referrer$/,
  'cross-origin-opener-policy': /^same-origin$/,
  'cross-origin-resource-policy': /^same-origin$/,
  'strict-transport-security': /max-age=\d{7,}/,
  'permissions-policy': /camera=\(\)/,
};

describe('security headers', () => {
  const stack = new Stack('sec-headers');
  let admin: string;
  let browser: Browser | undefined;

  beforeAll(async () => {
    await stack.start();
    admin = await stack.login();
  });
  afterAll(async () => {
    await browser?.close();
    await stack.stop();
  });

  test('every kind of answer carries them (API, errors, 404, OpenAPI, health, viewer page and script)', async () => {
    const requests: [string, string, unknown?, string?][] = [
      ['GET', '/health'],
      ['GET', '/ready'],
      ['GET', '/openapi.json'],
      ['GET', '/api/v1/templates', undefined, admin],
      ['GET', '/api/v1/templates'], // 401
      ['POST', '/api/v1/auth/login', { username: 'admin', password: 'wrong-password' }], // 401
      ['POST', '/api/v1/users', { nope: 1 }, admin], // 400
      ['GET', '/no/such/page'], // 404
      ['GET', '/vnc-viewer/some-session'],
      ['GET', '/vnc-viewer/assets/viewer.js'],
    ];
    for (const [method, p, body, token] of requests) {
      const res = await fetch(stack.url + p, {
        method,
        headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(token ? { authorization: `Bearer ${token}` } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      for (const [h, re] of Object.entries(EXPECTED)) {
        const v = res.headers.get(h);
        if (!v || !re.test(v)) throw new Error(`${method} ${p} (${res.status}): header ${h} is ${JSON.stringify(v)}, expected ${re}`);
      }
      if (p.startsWith('/api/')) expect([p, res.headers.get('cache-control')]).toEqual([p, 'no-store']);
    }
    const login = await fetch(`${stack.url}/api/v1/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'admin', password: 'admin' }),
    });
    expect(login.headers.get('cache-control')).toBe('no-store'); // the token is never cached
  });

  test("the viewer's policy: own script, its stylesheet by hash, same-origin connections, nothing inline", async () => {
    const res = await fetch(`${stack.url}/vnc-viewer/abc`);
    const csp = res.headers.get('content-security-policy')!;
    const html = await res.text();
    const directives = Object.fromEntries(
      csp
        .split(';')
        .map((d) => d.trim().split(/\s+/))
        .map(([k, ...v]) => [k, v]),
    );
    expect(directives['default-src']).toEqual(["'none'"]);
    expect(directives['script-src']).toEqual(["'self'"]);
    expect(directives['connect-src']).toEqual(["'self'"]);
    expect(directives['frame-ancestors']).toEqual(["'none'"]);
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|\*/);
    const style = /<style>([\s\S]*?)<\/style>/.exec(html)![1];
    expect(directives['style-src']).toEqual([`'sha256-${createHash('sha256').update(style).digest('base64')}'`]);
    expect(html).not.toMatch(/<script>|\son\w+=/); // no inline script or handlers
  });

  test('in Chromium: the viewer works under its CSP and keeps the token out of localStorage', async () => {
    await stack.startDockerAgent('docker-sec-headers-1', { VNC_PORT_RANGE: '15980-15989' });
    await stack.call('POST', '/api/v1/users', { username: 'alice', password: 'alice-password' }, admin);
    const alice = await stack.login('alice', 'alice-password');
    const sessionId = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice)).body.id;
    await stack.waitForState(alice, sessionId, 'running');

    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'] });
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    const violations: string[] = [];
    page.on('console', (m) => {
      if (/Content Security Policy/i.test(m.text())) violations.push(m.text());
    });
    await page.addInitScript(() => {
      document.addEventListener('securitypolicyviolation', (e) => console.error(`Content Security Policy violation: ${e.violatedDirective} ${e.blockedURI}`));
      localStorage.setItem('streamspace.token', 'left-by-an-old-viewer');
    });
    await page.goto(`${stack.url}/vnc-viewer/${sessionId}`);
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('input[name=username]', 'alice');
    await page.fill('input[name=password]', 'alice-password');
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#status[data-state=connected]', { timeout: 30_000 });
    await waitFor(
      'desktop pixels',
      () =>
        page.evaluate(() => {
          const c = document.querySelector('#screen canvas') as HTMLCanvasElement | null;
          if (!c || !c.width) return false;
          const d = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
          const colours = new Set<number>();
          for (let i = 0; i < d.length; i += 4 * 97) colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
          return colours.size >= 3;
        }),
      30_000,
      250,
    );
    const storage = await page.evaluate(() => ({
      local: Object.keys(localStorage),
      session: sessionStorage.getItem('streamspace.token'),
    }));
    expect(storage.local).toEqual([]); // nothing there (and the old viewer's token was removed)
    expect(storage.session).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+$/);
    // The stylesheet applied (a CSP-blocked <style> would leave the bar unstyled).
    expect(await page.evaluate(() => getComputedStyle(document.getElementById('bar')!).display)).toBe('flex');
    expect(violations).toEqual([]);
    await page.close();
  });
});
