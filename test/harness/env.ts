/** Where the real services run in tests (scripts/services.sh starts them on these ports). */
export const TEST_ENV = {
  pgAdminUrl: process.env.TEST_PG_ADMIN_URL ?? 'postgres://streamspace:streamspace@127.0.0.1:55432/postgres',
  temporalAddress: process.env.TEMPORAL_ADDRESS ?? '127.0.0.1:57233',
  // scripts/services.sh starts Redis with requirepass (REDIS_PASSWORD, default streamspace).
  redisUrl: process.env.TEST_REDIS_URL ?? `redis://:${encodeURIComponent(process.env.REDIS_PASSWORD ?? 'streamspace')}@127.0.0.1:56379`,
  dockerHost: process.env.DOCKER_HOST ?? 'unix:///var/run/docker.sock',
  sessionImage: process.env.TEST_SESSION_IMAGE ?? 'streamspace/session:local',
};

export function dbUrl(name: string): string {
  const u = new URL(TEST_ENV.pgAdminUrl);
  u.pathname = `/${name}`;
  return u.toString();
}
