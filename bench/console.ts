/**
 * The web console in headless Chromium against the real stack, in one run on this machine:
 *   first-load JavaScript: dist/console/manifest.json (raw, gzip) and what Chromium actually
 *     transferred for `/` → the login page, next to the 250 KB (gzip) budget;
 *   1,000 sessions of one user (rows inserted straight into the stack's database, as the API
 *     writes them): time to first rows on /sessions, DOM rows (the list is virtualised), and scroll
 *     smoothness (scrollBy 200 px per animation frame to the bottom, frame times from
 *     requestAnimationFrame) — and the same scroll on a baseline: a plain, non-virtualised HTML
 *     table of the same 1,000 rows and columns in a scroll box of the same size (page.setContent),
 *     reported as ours / baseline.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { chromium, Page } from 'playwright-core';
import { fmtMs, log, Metric, REPO_ROOT, summarize, withStack } from './common';

const NAME = 'console';
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const BUDGET = 250 * 1024;
const ROWS = 1000;
const STEP_PX = 200;
const FRAME_MS = 1000 / 60;
const LOADS = 5;
const VIEWPORT = { width: 1280, height: 800 };

const kb = (n: number) => `${(n / 1024).toFixed(1)} KB`;
const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}×` : 'n/a');

interface Pass {
  frames: number[];
  totalMs: number;
  maxDomRows: number;
  reachedRow: number;
}

/**
 * Scrolls `selector` to the bottom, STEP_PX per animation frame, and returns the frame-to-frame
 * times. `untilRow`: keep going (the list loads more as it nears the end) until the row with that
 * aria-rowindex is in the DOM and the box is at its bottom.
 */
async function scrollPass(page: Page, selector: string, untilRow: number | null): Promise<Pass> {
  return page.evaluate(
    ({ selector, step, untilRow }) =>
      new Promise<Pass>((resolve) => {
        const el = document.querySelector(selector) as HTMLElement;
        const frames: number[] = [];
        let maxDomRows = 0;
        let last = 0;
        let t0 = 0;
        let atBottomFor = 0;
        const rows = () => el.querySelectorAll('[data-testid=session-row], tbody tr').length;
        const reached = () => (untilRow === null ? true : !!el.querySelector(`[aria-rowindex="${untilRow}"]`));
        const tick = (t: number) => {
          frames.push(t - last);
          last = t;
          if (frames.length % 10 === 0) maxDomRows = Math.max(maxDomRows, rows());
          const bottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 1;
          atBottomFor = bottom ? atBottomFor + 1 : 0;
          if ((bottom && reached() && atBottomFor >= 2) || frames.length > 6000) {
            maxDomRows = Math.max(maxDomRows, rows());
            const reachedRow = Math.max(0, ...Array.from(el.querySelectorAll('[aria-rowindex]')).map((r) => Number(r.getAttribute('aria-rowindex'))));
            resolve({ frames, totalMs: t - t0, maxDomRows, reachedRow });
            return;
          }
          el.scrollBy(0, step);
          requestAnimationFrame(tick);
        };
        requestAnimationFrame((t) => {
          last = t;
          t0 = t;
          maxDomRows = rows();
          el.scrollBy(0, step);
          requestAnimationFrame(tick);
        });
      }),
    { selector, step: STEP_PX, untilRow },
  );
}

function describe(p: Pass) {
  const s = summarize(p.frames);
  return {
    ...s,
    dropped: p.frames.filter((f) => f > FRAME_MS).length,
    missed: p.frames.filter((f) => f > FRAME_MS * 1.5).length,
    totalMs: p.totalMs,
    maxDomRows: p.maxDomRows,
  };
}
type Described = ReturnType<typeof describe>;
const passLine = (d: Described) =>
  `${d.n} frames in ${fmtMs(d.totalMs)}: p50 ${fmtMs(d.p50)}  p95 ${fmtMs(d.p95)}  max ${fmtMs(d.max)}; >16.7 ms: ${d.dropped}; >25 ms (a vsync missed): ${d.missed}; max DOM rows ${d.maxDomRows}`;

/** A plain table of the same rows and columns as the console's user session list, in a box of the same size. */
function baselineHtml(rows: Array<{ id: string; template: string; state: string; platform: string; created_at: string }>, boxHeight: number): string {
  const esc = (s: string) => s.replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const body = rows
    .map(
      (r, i) =>
        `<tr aria-rowindex="${i + 2}"><td><span class="chip">${esc(r.state)}</span></td><td>${esc(r.template)}<br><small>${esc(r.id.slice(0, 8))}</small></td>` +
        `<td>${esc(r.platform)}</td><td>docker-bench-1</td><td><time datetime="${esc(r.created_at)}">${esc(r.created_at.slice(0, 16))}</time></td><td>—</td>` +
        `<td>${r.state === 'running' ? '<a href="#">Connect</a> <button>Hibernate</button>' : '<button>Wake</button>'} <button>Stop</button></td></tr>`,
    )
    .join('');
  return `<!doctype html><html><head><style>
    body{font:14px system-ui,sans-serif;margin:0;padding:24px}
    #box{height:${boxHeight}px;overflow:auto;border:1px solid #ddd}
    table{border-collapse:collapse;width:100%;min-width:980px}
    th{position:sticky;top:0;background:#fff;text-align:left;padding:8px;border-bottom:1px solid #ddd}
    td{height:47px;padding:8px;border-bottom:1px solid #eee}
    .chip{border-radius:12px;background:#dcfce7;padding:2px 8px}
  </style></head><body><div id="box"><table><thead><tr><th>State</th><th>Template</th><th>Platform</th><th>Agent</th><th>Age</th><th>Last activity</th><th>Actions</th></tr></thead>
  <tbody>${body}</tbody></table></div></body></html>`;
}

export async function consoleBench(): Promise<Metric[]> {
  const manifest = JSON.parse(readFileSync(path.join(REPO_ROOT, 'dist', 'console', 'manifest.json'), 'utf8')) as {
    script: string;
    bytes: number;
    gzip_bytes: number;
  };
  log(NAME, `manifest: ${manifest.script} raw ${kb(manifest.bytes)}, gzip ${kb(manifest.gzip_bytes)} (budget ${kb(BUDGET)} gzip)`);

  return withStack(NAME, {}, async (stack) => {
    const browser = await chromium.launch({
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
    try {
      // --- first load: `/` → the login page, cold cache ---
      const ctx0 = await browser.newContext({ viewport: VIEWPORT });
      const p0 = await ctx0.newPage();
      const scripts: Array<{ url: string; encoding: string; transferred: number; raw: number; gzip: number }> = [];
      const pending: Array<Promise<void>> = [];
      p0.on('response', (res) => {
        if (res.request().resourceType() !== 'script') return;
        pending.push(
          (async () => {
            const body = await res.body();
            const sizes = await res.request().sizes();
            scripts.push({
              url: new URL(res.url()).pathname,
              encoding: res.headers()['content-encoding'] ?? 'identity',
              transferred: sizes.responseBodySize,
              raw: body.length,
              gzip: gzipSync(body, { level: 9 }).length,
            });
          })(),
        );
      });
      await p0.goto(`${stack.url}/`);
      await p0.waitForURL(/\/login/);
      await p0.locator('h1').waitFor();
      await Promise.all(pending);
      await ctx0.close();
      const transferred = scripts.reduce((a, s) => a + s.transferred, 0);
      const raw = scripts.reduce((a, s) => a + s.raw, 0);
      const gz = scripts.reduce((a, s) => a + s.gzip, 0);
      for (const s of scripts)
        log(
          NAME,
          `first load script ${s.url}: transferred ${kb(s.transferred)} (content-encoding ${s.encoding}), decoded ${kb(s.raw)}, gzip -9 of it ${kb(s.gzip)}`,
        );
      log(
        NAME,
        `first-load JS: ${scripts.length} script(s), transferred ${kb(transferred)}, raw ${kb(raw)}, gzip ${kb(gz)}; budget ${kb(BUDGET)} gzip → manifest gzip / budget = ${ratio(manifest.gzip_bytes, BUDGET)}, transferred / budget = ${ratio(transferred, BUDGET)}`,
      );

      // --- 1,000 sessions of one user, straight into the database ---
      const admin = await stack.login();
      await stack.call('POST', '/api/v1/users', { username: 'bench', password: 'bench-password' }, admin);
      const token = await stack.login('bench', 'bench-password');
      const uid = ((await stack.call('GET', '/api/v1/users', undefined, admin)).body as Array<{ id: string; username: string }>).find(
        (u) => u.username === 'bench',
      )!.id;
      await stack.pool.query(
        `INSERT INTO sessions (id, user_id, template_name, state, platform, created_at, updated_at, last_activity)
         SELECT gen_random_uuid()::text, $1, 'terminal', CASE WHEN i % 3 = 0 THEN 'hibernated' ELSE 'running' END, 'docker',
                NOW() - i * interval '7 minutes', NOW() - i * interval '7 minutes', NOW() - i * interval '5 minutes'
           FROM generate_series(1, $2::int) AS i`,
        [uid, ROWS],
      );
      const listed = await fetch(`${stack.url}/api/v1/sessions?limit=1000`, { headers: { authorization: `Bearer ${token}` } });
      const rows = (await listed.json()) as Array<{ id: string; template: string; state: string; platform: string; created_at: string }>;
      log(NAME, `${rows.length} sessions for user bench (x-total-count ${listed.headers.get('x-total-count')})`);

      // Time to first rows, LOADS fresh contexts (cold cache each), from navigation start.
      const firstRows: number[] = [];
      const domRowsAtLoad: number[] = [];
      let page!: Page;
      for (let i = 0; i < LOADS; i++) {
        const ctx = await browser.newContext({ viewport: VIEWPORT });
        await ctx.addInitScript((t: string) => {
          window.sessionStorage.setItem('streamspace.token', t);
          const w = window as unknown as { __firstRows?: number };
          new MutationObserver((_m, obs) => {
            if (w.__firstRows === undefined && document.querySelector('[data-testid=session-row]')) {
              w.__firstRows = performance.now();
              obs.disconnect();
            }
          }).observe(document, { childList: true, subtree: true });
        }, token);
        page = await ctx.newPage();
        await page.goto(`${stack.url}/sessions`);
        await page.waitForSelector('[data-testid=session-row]');
        await page.waitForSelector('[data-testid=session-count]:has-text("1000 sessions")');
        firstRows.push(await page.evaluate(() => (window as unknown as { __firstRows: number }).__firstRows));
        domRowsAtLoad.push(await page.locator('[data-testid=session-row]').count());
        if (i < LOADS - 1) await ctx.close();
      }
      const fr = summarize(firstRows);
      log(
        NAME,
        `/sessions with ${ROWS} sessions, time to first rows (navigation start → first row in the DOM), ${LOADS} cold loads: p50 ${fmtMs(fr.p50)}  max ${fmtMs(fr.max)}  (min ${fmtMs(fr.min)}); DOM rows after load: ${domRowsAtLoad[0]}`,
      );

      const box = '[aria-label="Sessions list"]';
      const boxHeight = await page.$eval(box, (e) => (e as HTMLElement).clientHeight);
      // Cold pass: the list fetches pages of 100 as the end nears (cursor paging), all the way to row 1000.
      const cold = describe(await scrollPass(page, box, ROWS + 1));
      log(NAME, `ours, first scroll to the bottom (fetching pages as it goes): ${passLine(cold)}`);
      await page.$eval(box, (e) => ((e as HTMLElement).scrollTop = 0));
      await page.waitForTimeout(500);
      const ours = describe(await scrollPass(page, box, ROWS + 1));
      const domElementsOurs = await page.evaluate(() => document.getElementsByTagName('*').length);
      log(NAME, `ours, scroll to the bottom with all ${ROWS} loaded: ${passLine(ours)}; DOM elements ${domElementsOurs}`);
      await page.context().close();

      // Baseline: a plain table of the same rows in a box of the same height.
      const bctx = await browser.newContext({ viewport: VIEWPORT });
      const bpage = await bctx.newPage();
      const tb = Date.now();
      await bpage.setContent(baselineHtml(rows, boxHeight));
      await bpage.evaluate(() => document.body.getBoundingClientRect());
      const baselineRenderMs = Date.now() - tb;
      const baseDomRows = await bpage.locator('tbody tr').count();
      await bpage.waitForTimeout(500);
      const base = describe(await scrollPass(bpage, '#box', null));
      const domElementsBase = await bpage.evaluate(() => document.getElementsByTagName('*').length);
      log(
        NAME,
        `baseline plain table (${baseDomRows} rows in the DOM, setContent + layout ${baselineRenderMs} ms): ${passLine(base)}; DOM elements ${domElementsBase}`,
      );
      await bctx.close();

      log(
        NAME,
        `ours / baseline: frame p50 ${ratio(ours.p50, base.p50)}, p95 ${ratio(ours.p95, base.p95)}, max ${ratio(ours.max, base.max)}, frames >16.7 ms ${ours.dropped} / ${base.dropped}, ` +
          `time to the bottom ${ratio(ours.totalMs, base.totalMs)}, DOM rows ${ours.maxDomRows} / ${baseDomRows}, DOM elements ${ratio(domElementsOurs, domElementsBase)}`,
      );

      return [
        {
          metric: 'console first-load JS (gzip)',
          ours: `${kb(manifest.gzip_bytes)} gzip (raw ${kb(manifest.bytes)}); transferred ${kb(transferred)} (${scripts.map((s) => s.encoding).join(',')})`,
          target: `≤ ${kb(BUDGET)}: ${ratio(manifest.gzip_bytes, BUDGET)} of budget`,
          peer: '',
        },
        { metric: 'console 1,000 sessions: first rows', ours: `p50 ${fmtMs(fr.p50)}, max ${fmtMs(fr.max)} (${LOADS} cold loads)`, target: '', peer: '' },
        {
          metric: 'console 1,000 sessions: DOM rows',
          ours: `${ours.maxDomRows} (at load ${domRowsAtLoad[0]})`,
          target: `< ${ROWS} (virtualised)`,
          peer: `plain table ${baseDomRows}`,
        },
        {
          metric: 'console scroll frame p50/p95/max',
          ours: `${fmtMs(ours.p50)} / ${fmtMs(ours.p95)} / ${fmtMs(ours.max)}`,
          target: `${ratio(ours.p95, base.p95)} baseline p95`,
          peer: `plain table ${fmtMs(base.p50)} / ${fmtMs(base.p95)} / ${fmtMs(base.max)}`,
        },
        {
          metric: 'console scroll frames >16.7 ms',
          ours: `${ours.dropped} of ${ours.n} (${ours.missed} >25 ms)`,
          target: '',
          peer: `plain table ${base.dropped} of ${base.n} (${base.missed} >25 ms)`,
        },
      ];
    } finally {
      await browser.close();
    }
  });
}
