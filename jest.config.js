/** Tests run against the real services started by scripts/provision.sh (see README). */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { diagnostics: false }] },
  globalSetup: '<rootDir>/test/harness/global-setup.ts',
  testTimeout: 180000,
  reporters: ['default', '<rootDir>/test/harness/summary-reporter.js'],
};
