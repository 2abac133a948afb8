// Lint: typescript-eslint's recommended rules over the TypeScript sources (`npm run lint`).
const tseslint = require('typescript-eslint');

module.exports = tseslint.config({ ignores: ['dist/**', 'node_modules/**', 'test-artifacts/**', '**/*.js'] }, ...tseslint.configs.recommended, {
  rules: {
    // Test and fixture code reads untyped JSON (Kubernetes objects, API bodies).
    '@typescript-eslint/no-explicit-any': 'off',
    '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    '@typescript-eslint/no-require-imports': 'off',
  },
});
