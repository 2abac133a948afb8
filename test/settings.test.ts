/**
 * Every documented setting is read: the agents' reconnect backoff (RECONNECT_INITIAL_DELAY,
 * RECONNECT_MAX_DELAY), identity and capacity variables, the HA variables, and the gateway's.
 */
import { backoffDelay } from '../agents/common/backoff';
import { loadAgentConfig } from '../agents/common/config';
import { loadGatewayConfig } from '../api/config';
import { parseDuration } from '../config/env';

describe('settings', () => {
  test('durations as the spec writes them', () => {
    expect([parseDuration('30s'), parseDuration('5m'), parseDuration('250ms'), parseDuration('14d'), parseDuration('2')]).toEqual([
      30_000,
      300_000,
      250,
      14 * 86_400_000,
      2000,
    ]);
    expect(() => parseDuration('soon', 'LEASE_DURATION')).toThrow(/LEASE_DURATION: "soon" is not a duration/);
  });

  test('agent environment (spec names) is read, with clear errors', () => {
    const cfg = loadAgentConfig('docker', {
      AGENT_ID: 'docker-host-01',
      CONTROL_PLANE_URL: 'wss://streamspace.example.com',
      AGENT_TOKEN: 't',
      PLATFORM: 'docker',
      REGION: 'us-east-1',
      CLUSTER_ID: 'c1',
      MAX_SESSIONS: '7',
      MAX_CPU: '100',
      MAX_MEMORY: '256',
      RECONNECT_INITIAL_DELAY: '50ms',
      RECONNECT_MAX_DELAY: '3s',
      HEALTH_PORT: '9999',
    });
    expect(cfg).toMatchObject({
      agentId: 'docker-host-01',
      region: 'us-east-1',
      clusterId: 'c1',
      capacity: { max_sessions: 7, max_cpu: 100, max_memory: 256 },
      reconnectInitialDelayMs: 50,
      reconnectMaxDelayMs: 3000,
      healthPort: 9999,
    });
    expect(() => loadAgentConfig('docker', { CONTROL_PLANE_URL: 'ws://x', AGENT_TOKEN: 't' })).toThrow(/AGENT_ID must be set/);
    expect(() => loadAgentConfig('docker', { AGENT_ID: 'a', CONTROL_PLANE_URL: 'ws://x', AGENT_TOKEN: 't', PLATFORM: 'kubernetes' })).toThrow(
      /PLATFORM=kubernetes but this is the docker agent/,
    );
    expect(() => loadAgentConfig('docker', { AGENT_ID: 'a', CONTROL_PLANE_URL: 'ws://x', AGENT_TOKEN: 't', MAX_SESSIONS: '-1' })).toThrow(/MAX_SESSIONS/);
  });

  test('reconnect backoff: capped, jittered, growing from RECONNECT_INITIAL_DELAY to RECONNECT_MAX_DELAY', () => {
    const lo = () => 0;
    const hi = () => 0.999999;
    expect(backoffDelay(0, 100, 5000, lo)).toBe(50);
    expect(backoffDelay(0, 100, 5000, hi)).toBe(100);
    expect(backoffDelay(3, 100, 5000, hi)).toBe(800);
    expect(backoffDelay(20, 100, 5000, hi)).toBe(5000);
    expect(backoffDelay(20, 100, 5000, lo)).toBe(2500);
    const samples = Array.from({ length: 200 }, () => backoffDelay(10, 100, 5000));
    expect(new Set(samples).size).toBeGreaterThan(50); // jittered, not lock-step
    expect(Math.max(...samples)).toBeLessThanOrEqual(5000);
  });

  test('gateway environment (spec names) is read', () => {
    const cfg = loadGatewayConfig({
      DB_HOST: 'db.example',
      DB_PORT: '5433',
      DB_NAME: 'ss',
      DB_USER: 'u',
      DB_PASSWORD: 'p w',
      JWT_SECRET: 's',
      PORT: '9090',
      AGENT_HEARTBEAT_TIMEOUT: '45s',
      VNC_PROXY_TIMEOUT: '2m',
      REDIS_URL: 'redis://r:6379',
      AGENT_HUB_BACKEND: 'redis',
      LOG_LEVEL: 'debug',
    });
    expect(cfg).toMatchObject({
      databaseUrl: 'postgres://u:p%20w@db.example:5433/ss',
      port: 9090,
      heartbeatTimeoutMs: 45_000,
      vncProxyTimeoutMs: 120_000,
      hubBackend: 'redis',
      redisUrl: 'redis://r:6379',
    });
    expect(() => loadGatewayConfig({ AGENT_HUB_BACKEND: 'redis' })).toThrow(/needs REDIS_URL/);
    expect(() => loadGatewayConfig({ AGENT_HUB_BACKEND: 'etcd' })).toThrow(/must be memory or redis/);
  });
});
