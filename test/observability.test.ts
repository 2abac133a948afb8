/**
 * Issue 10, item 7: logs through pino (JSON lines, secrets redacted, written before the process can die)
 * and Prometheus metrics through prom-client on the gateway, the worker (with the Temporal SDK's own
 * metrics) and the agents' registry.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { createMetrics } from '../api/metrics';
import { createAgentMetrics } from '../agents/common/metrics';
import { createWorkerMetrics } from '../workers/metrics';
import { freePort, ROOT, Stack, waitFor } from './harness/stack';

jest.setTimeout(120_000);

/** Runs a snippet against the built logger (dist/config/log.js) in a child process; returns its stdout and stderr. */
function runLogger(snippet: string, env: NodeJS.ProcessEnv = {}): Promise<{ stdout: string; stderr: string }> {
  const script = `const { createLogger } = require(${JSON.stringify(path.join(ROOT, 'dist', 'config', 'log.js'))});\n${snippet}`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script], { env: { ...process.env, LOG_LEVEL: 'info', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', () => resolve({ stdout, stderr }));
  });
}

const SECRETS = ['hunter2-password', 'eyJ-jwt-token', 'Bearer abc.def', 'session=cookie-value', 'sk-api-key', 'postgres://u:dbpass@h/db', 'topsecret'];

describe('logs', () => {
  test('JSON lines with component and level label; secret fields redacted, top level and one level down; written before a SIGKILL', async () => {
    const { stdout } = await runLogger(`
      const log = createLogger('gateway');
      log.info('Server started', {
        port: 8080,
        password: 'hunter2-password',
        token: 'eyJ-jwt-token',
        headers: { authorization: 'Bearer abc.def', cookie: 'session=cookie-value', accept: 'text/html' },
        user: { name: 'alice', apiKey: 'sk-api-key', api_key: 'sk-api-key' },
        DATABASE_URL: 'postgres://u:dbpass@h/db',
        config: { databaseUrl: 'postgres://u:dbpass@h/db', secret: 'topsecret' },
      });
      log.warn('This agent is a FOLLOWER (leader: k8s-agent-0_abc)');
      process.kill(process.pid, 'SIGKILL');
    `);
    for (const s of SECRETS) expect(stdout).not.toContain(s);
    const lines = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatchObject({
      level: 'info',
      component: 'gateway',
      msg: 'Server started',
      port: 8080,
      password: '[redacted]',
      token: '[redacted]',
      headers: { authorization: '[redacted]', cookie: '[redacted]', accept: 'text/html' },
      user: { name: 'alice', apiKey: '[redacted]', api_key: '[redacted]' },
      DATABASE_URL: '[redacted]',
      config: { databaseUrl: '[redacted]', secret: '[redacted]' },
    });
    expect(typeof lines[0].time).toBe('string');
    expect(lines[1]).toMatchObject({ level: 'warn', component: 'gateway', msg: 'This agent is a FOLLOWER (leader: k8s-agent-0_abc)' });
    // Grepped by tests and operators: the message appears verbatim in the line.
    expect(stdout).toMatch(/FOLLOWER \(leader: k8s-agent-0_/);
  });

  test('LOG_LEVEL filters', async () => {
    const { stdout } = await runLogger(`const log = createLogger('worker'); log.debug('d'); log.info('i'); log.warn('w'); log.error('e');`, {
      LOG_LEVEL: 'warn',
    });
    expect(
      stdout
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l).msg),
    ).toEqual(['w', 'e']);
  });
});

describe('metric registries', () => {
  test('one registry per call: two gateways in one process; the old call shapes still work', async () => {
    const a = createMetrics();
    const b = createMetrics();
    a.redisConnection.set(1);
    a.agentStatus.set({ agent_id: 'x', status: 'online' }, 1); // prom-client's shape
    a.commandsSent.inc({ type: 'start_session' });
    a.vncBytes.inc({ direction: 'to_viewer' }, 42);
    a.vncActiveTunnels.inc();
    a.vncActiveTunnels.inc();
    a.vncActiveTunnels.dec();
    a.commandRoundTrip.observe({ platform: 'docker', type: 'start_session', outcome: 'completed' }, 1.5);
    expect(a.redisConnection.get()).toBe(1);
    expect(b.redisConnection.get()).toBe(0);
    expect(a.agentStatus.get({ status: 'online', agent_id: 'x' })).toBe(1);
    expect(a.vncBytes.get({ direction: 'to_viewer' })).toBe(42);
    expect(a.vncActiveTunnels.get()).toBe(1);
    const text = await a.render();
    expect(text).toContain('streamspace_redis_connection_status 1');
    expect(text).toContain('streamspace_commands_sent_total{type="start_session"} 1');
    expect(text).toContain('streamspace_vnc_bytes_total{direction="to_viewer"} 42');
    expect(text).toContain('streamspace_command_round_trip_seconds_bucket{le="2.5",platform="docker",type="start_session",outcome="completed"} 1');
    expect(await b.render()).toContain('streamspace_redis_connection_status 0');
    createWorkerMetrics();
    createWorkerMetrics();
    const agent = createAgentMetrics();
    agent.commandsRefused.inc({ type: 'start_session', reason: 'expired' });
    agent.leaderStatus.set({ agent_id: 'k8s-1' }, 1);
    const agentText = await agent.render();
    expect(agentText).toContain('streamspace_agent_commands_refused_total{type="start_session",reason="expired"} 1');
    expect(agentText).toContain('streamspace_agent_leader_status{agent_id="k8s-1"} 1');
    expect(agentText).toMatch(/^# TYPE streamspace_agent_commands_executed_total counter$/m);
    expect(agentText).toMatch(/^# TYPE streamspace_agent_results_resent_total counter$/m);
    expect(agentText).toMatch(/^streamspace_agent_process_cpu_user_seconds_total /m);
  });
});

describe('gateway and worker /metrics on a real stack', () => {
  let workerMetricsPort: number;
  let stack: Stack;

  beforeAll(async () => {
    workerMetricsPort = await freePort();
    stack = new Stack('observability', { WORKER_METRICS_PORT: String(workerMetricsPort) });
    await stack.start();
  });
  afterAll(() => stack?.stop());

  test('the processes log JSON lines through pino', () => {
    const started = stack.api.output.split('\n').find((l) => l.includes('Server started'));
    expect(JSON.parse(started!)).toMatchObject({ level: 'info', msg: expect.stringMatching(/^Server started/) });
    const worker = stack.worker.output.split('\n').find((l) => l.includes('Worker started'));
    expect(JSON.parse(worker!)).toMatchObject({ level: 'info', component: 'worker', metrics: `http://127.0.0.1:${workerMetricsPort}/metrics` });
  });

  test('gateway: the new metrics, per-agent status and prom-client default metrics', async () => {
    await stack.pool.query(`INSERT INTO agents (agent_id, platform, status) VALUES ('obs-agent-1', 'docker', 'offline'), ('obs-agent-2', 'docker', 'online')`);
    const r = await fetch(`${stack.url}/metrics`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await r.text();
    for (const [name, type] of [
      ['streamspace_command_redeliveries_total', 'counter'],
      ['streamspace_commands_expired_total', 'counter'],
      ['streamspace_command_round_trip_seconds', 'histogram'],
      ['streamspace_command_results_acknowledged_total', 'counter'],
      ['streamspace_reconcile_divergences_total', 'counter'],
      ['streamspace_http_requests_total', 'counter'],
      ['streamspace_agent_status', 'gauge'],
    ])
      expect(text).toMatch(new RegExp(`^# TYPE ${name} ${type}$`, 'm'));
    // The spec's alert: streamspace_agent_status{status="offline"} > 0, summarised by agent_id.
    expect(text).toContain('streamspace_agent_status{agent_id="obs-agent-1",status="offline"} 1');
    expect(text).toContain('streamspace_agent_status{agent_id="obs-agent-1",status="online"} 0');
    expect(text).toContain('streamspace_agent_status{agent_id="obs-agent-2",status="online"} 1');
    expect(text).toMatch(/^streamspace_gateway_process_cpu_user_seconds_total \d/m);
    expect(text).toMatch(/^streamspace_gateway_nodejs_eventloop_lag_seconds \d/m);
    expect(text).toMatch(/^streamspace_agent_protocol_errors_total \d+$/m);
    // An agent removed from the database leaves the metric.
    await stack.pool.query(`DELETE FROM agents WHERE agent_id = 'obs-agent-1'`);
    expect(await (await fetch(`${stack.url}/metrics`)).text()).not.toContain('obs-agent-1');
  });

  test('worker: our registry plus the Temporal SDK metrics on WORKER_METRICS_PORT', async () => {
    const url = `http://127.0.0.1:${workerMetricsPort}/metrics`;
    // Core's exporter shows the worker's metrics once it has polled.
    const text = await waitFor(
      'Temporal SDK metrics on the worker endpoint',
      async () => {
        const body = await (await fetch(url)).text();
        return /^temporal_\w+/m.test(body) && body;
      },
      30_000,
      500,
    );
    for (const [name, type] of [
      ['streamspace_session_failures_total', 'counter'],
      ['streamspace_session_start_seconds', 'histogram'],
      ['streamspace_reconcile_repairs_total', 'counter'],
    ])
      expect(text).toMatch(new RegExp(`^# TYPE ${name} ${type}$`, 'm'));
    expect(text).toMatch(/^streamspace_worker_process_cpu_user_seconds_total \d/m);
    expect(text).not.toMatch(/Temporal SDK metrics unavailable/);
    expect(text).toMatch(/^temporal_\w+\{[^}]*task_queue="[^"]+"/m);
    expect((await fetch(url.replace('/metrics', '/other'))).status).toBe(404);
  });
});
