/**
 * Issue 3 in a real browser: headless Chromium (Debian's) driven by playwright-core opens
 * /vnc-viewer/<id>, logs in, sees the session's desktop and types into its terminal; then the
 * agent restarts mid-stream and the viewer reconnects by itself. Screenshots are kept in
 * test-artifacts/vnc/.
 */
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { Browser, chromium, Page } from 'playwright-core';
import { ROOT, Stack, waitFor } from './harness/stack';

jest.setTimeout(300_000);

const ARTIFACTS = path.join(ROOT, 'test-artifacts', 'vnc');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

interface Pixels {
  width: number;
  height: number;
  distinctColours: number;
  lumaStdDev: number;
  hash: string;
}

/** Reads the noVNC canvas in the page: how varied it is, and a fingerprint to detect change. */
async function canvasPixels(page: Page): Promise<Pixels> {
  return page.evaluate(() => {
    const canvas = document.querySelector('#screen canvas') as HTMLCanvasElement | null;
    if (!canvas || !canvas.width) return { width: 0, height: 0, distinctColours: 0, lumaStdDev: 0, hash: '' };
    const data = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
    const colours = new Set<number>();
    let sum = 0;
    let sumSq = 0;
    let h = 0;
    const n = data.length / 4;
    for (let i = 0; i < data.length; i += 4) {
      const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
      colours.add(rgb);
      const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
      sum += y;
      sumSq += y * y;
      h = (Math.imul(h, 31) + rgb) | 0;
    }
    const mean = sum / n;
    return { width: canvas.width, height: canvas.height, distinctColours: colours.size, lumaStdDev: Math.sqrt(sumSq / n - mean * mean), hash: String(h) };
  });
}

describe('VNC in the browser through the agent', () => {
  const stack = new Stack('vnc-viewer');
  const AGENT = 'docker-viewer-1';
  let browser: Browser;
  let sessionId: string;
  let containerId: string;

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    await stack.start();
    await stack.startDockerAgent(AGENT, { VNC_PORT_RANGE: '15960-15969' });
    const admin = await stack.login();
    await stack.call('POST', '/api/v1/users', { username: 'alice', password: 'alice-password' }, admin);
    const alice = await stack.login('alice', 'alice-password');
    sessionId = (await stack.call('POST', '/api/v1/sessions', { template: 'terminal', platform: 'docker' }, alice)).body.id;
    await stack.waitForState(alice, sessionId, 'running');
    containerId = (await stack.containers(sessionId))[0].Id;
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await stack.stop();
  });

  test('log in, see the desktop, type into the terminal, survive an agent restart', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    await page.goto(`${stack.url}/vnc-viewer/${sessionId}`);
    // Not signed in yet: the viewer asks for credentials.
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('input[name=username]', 'alice');
    await page.fill('input[name=password]', 'alice-password');
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#status[data-state=connected]', { timeout: 30_000 });

    // The desktop is drawn: a coloured root window and a terminal, not a blank canvas.
    const desktop = await waitFor(
      'desktop pixels',
      async () => {
        const p = await canvasPixels(page);
        return p.width === 1280 && p.distinctColours >= 3 && p.lumaStdDev > 10 ? p : undefined;
      },
      30_000,
      250,
    );
    await page.screenshot({ path: path.join(ARTIFACTS, '1-desktop.png') });
    expect(desktop).toMatchObject({ width: 1280, height: 800 });

    // Type a command into the xterm (X focus follows the pointer: move it over the terminal).
    const box = (await page.locator('#screen canvas').boundingBox())!;
    await page.mouse.click(box.x + (300 * box.width) / desktop.width, box.y + (200 * box.height) / desktop.height);
    await page.waitForTimeout(300);
    page.on('pageerror', (e) => console.error('viewer page error:', e.message));
    const afterClick = await canvasPixels(page);
    await page.keyboard.type('touch "$HOME/typed-in-viewer" && echo VIEWER-WORKS', { delay: 15 });
    await page.keyboard.press('Enter');
    const typed = await waitFor(
      'screen to change',
      async () => {
        const p = await canvasPixels(page);
        return p.hash !== afterClick.hash ? p : undefined;
      },
      20_000,
      250,
    );
    await page.screenshot({ path: path.join(ARTIFACTS, '2-typed.png') });
    expect(typed.hash).not.toBe(desktop.hash);
    // The keystrokes reached the session for real: the command ran inside the container.
    await waitFor(
      'typed command to run in the session',
      async () => {
        const exec = await stack.docker.getContainer(containerId).exec({ Cmd: ['test', '-f', '/config/typed-in-viewer'] });
        await exec.start({});
        await new Promise((r) => setTimeout(r, 100));
        return (await exec.inspect()).ExitCode === 0;
      },
      20_000,
      250,
    );

    // The agent restarts mid-stream: the viewer shows the drop, then reconnects by itself.
    await stack.agents.get(AGENT)!.kill('SIGKILL');
    await page.waitForSelector('#status[data-state=disconnected]', { timeout: 15_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, '3-agent-down.png') });
    expect(await page.textContent('#status')).toMatch(/Disconnected .*reconnecting in/);
    await stack.startDockerAgent(AGENT);
    await page.waitForSelector('#status[data-state=connected]', { timeout: 60_000 });
    await waitFor('desktop after reconnect', async () => (await canvasPixels(page)).lumaStdDev > 10, 30_000, 250);
    await page.screenshot({ path: path.join(ARTIFACTS, '4-reconnected.png') });

    // Closing the page closes the tunnel everywhere.
    await page.close();
    await waitFor('no tunnel left', async () => /^streamspace_vnc_active_tunnels 0$/m.test((await stack.call('GET', '/metrics')).body), 15_000);
  });
});
