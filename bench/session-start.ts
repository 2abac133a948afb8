/**
 * Session start with the image present, on a real Docker agent: POST /api/v1/sessions → GET
 * says running (the agent only reports running once the VNC server answers RFB), one session at
 * a time. Then hibernate (docker stop, volume kept) and wake (docker start + VNC ready) on a few
 * of them, and finally stop all.
 */
import { createSession, fmtMs, fmtSummary, log, mapLimit, Metric, ms, now, pollState, summarize, withStack } from './common';

const NAME = 'session-start';
const SESSIONS = 20;
const HIBERNATE_WAKE = 5;

export async function sessionStartBench(): Promise<Metric[]> {
  return withStack(`bench-${NAME}`, {}, async (stack) => {
    await stack.startDockerAgent('bench-docker-start', { VNC_PORT_RANGE: '16000-16049', MAX_SESSIONS: '50' });
    const token = await stack.login();

    const ids: string[] = [];
    const starts: number[] = [];
    for (let i = 0; i < SESSIONS; i++) {
      const t0 = now();
      const id = await createSession(stack, token);
      ids.push(id);
      await pollState(stack, token, id, 'running', 20);
      starts.push(ms(t0));
    }
    const start = summarize(starts);
    log(NAME, `create → running (Docker, image present): ${fmtSummary(start)}; first session ${fmtMs(starts[0])}`);

    // Hibernate and wake are synchronous API calls that return the final state.
    const hibernates: number[] = [];
    const wakes: number[] = [];
    for (const id of ids.slice(0, HIBERNATE_WAKE)) {
      let t = now();
      const h = await stack.call<{ state: string }>('POST', `/api/v1/sessions/${id}/hibernate`, undefined, token);
      hibernates.push(ms(t));
      if (h.status !== 200 || h.body.state !== 'hibernated') throw new Error(`hibernate ${id}: ${h.status} ${JSON.stringify(h.body)}`);
      t = now();
      const w = await stack.call<{ state: string }>('POST', `/api/v1/sessions/${id}/wake`, undefined, token);
      wakes.push(ms(t));
      if (w.status !== 200 || w.body.state !== 'running') throw new Error(`wake ${id}: ${w.status} ${JSON.stringify(w.body)}`);
    }
    const hib = summarize(hibernates);
    const wake = summarize(wakes);
    log(NAME, `hibernate: ${fmtSummary(hib)}`);
    log(NAME, `wake:      ${fmtSummary(wake)}`);

    const stops: number[] = [];
    await mapLimit(ids, 4, async (id) => {
      const t = now();
      const r = await stack.call<{ state: string }>('DELETE', `/api/v1/sessions/${id}`, undefined, token);
      stops.push(ms(t));
      if (r.status !== 200 || r.body.state !== 'terminated') log(NAME, `stop ${id}: ${r.status} ${JSON.stringify(r.body)}`);
    });
    log(NAME, `stop (4 at a time): ${fmtSummary(summarize(stops))}; containers left: ${(await stack.containers()).length}`);

    return [
      {
        metric: 'session start, image present (Docker)',
        ours: `p50 ${fmtMs(start.p50)}, p95 ${fmtMs(start.p95)} (n=${start.n})`,
        target: 'p50 < 1.5 s to running',
        peer: '2–3 s pods on a fast cluster (KubeSpawner)',
      },
      { metric: 'hibernate / wake (Docker)', ours: `p50 ${fmtMs(hib.p50)} / ${fmtMs(wake.p50)} (n=${hib.n})`, target: '—', peer: '—' },
    ];
  });
}
