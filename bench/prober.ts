/**
 * The scale bench's API prober, in a process of its own (forked by bench/scale.ts): the latency a
 * client sees of `GET /sessions?limit=100`, a page deep in the list (after a 1,000-row page's
 * cursor) and `GET /sessions/:id` (an id from the list just read), at a steady pace, without the
 * load generator's own event loop (1,000 fake agents, 100 clients) in the figures.
 *
 * Parent → child: { url, token } to start, 'stop' to end; child → parent: { list, deep, get } (ms)
 * and cpuSeconds (its own CPU while it probed).
 */
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';

async function timed(url: string, token: string): Promise<[number, unknown, Headers]> {
  const t0 = performance.now();
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  const body = await res.json();
  const ms = performance.now() - t0;
  return [res.status === 200 ? ms : -1, body, res.headers];
}

async function probe(base: string, token: string, stopped: () => boolean) {
  const list: number[] = [];
  const deep: number[] = [];
  const get: number[] = [];
  for (let i = 0; !stopped(); i++) {
    const [tl, rows] = await timed(`${base}/api/v1/sessions?limit=100`, token);
    if (tl >= 0) list.push(tl);
    if (i % 5 === 0) {
      const [, , headers] = await timed(`${base}/api/v1/sessions?limit=1000`, token);
      const cursor = headers.get('x-next-cursor');
      if (cursor) {
        const [td] = await timed(`${base}/api/v1/sessions?limit=100&cursor=${encodeURIComponent(cursor)}`, token);
        if (td >= 0) deep.push(td);
      }
    }
    const ids = Array.isArray(rows) ? (rows as Array<{ id: string }>).map((r) => r.id) : [];
    if (ids.length) {
      const [tg] = await timed(`${base}/api/v1/sessions/${ids[(i * 7919) % ids.length]}`, token);
      if (tg >= 0) get.push(tg);
    }
    await sleep(50);
  }
  return { list, deep, get };
}

if (require.main === module) {
  let stop = false;
  process.on('message', (m: unknown) => {
    if (m === 'stop') stop = true;
    else if (m && typeof m === 'object' && 'url' in m) {
      const { url, token } = m as { url: string; token: string };
      const cpu0 = process.cpuUsage();
      void probe(url, token, () => stop).then((r) => {
        const cpu = process.cpuUsage(cpu0);
        process.send!({ ...r, cpuSeconds: (cpu.user + cpu.system) / 1e6 }, () => process.exit(0));
      });
    }
  });
}
