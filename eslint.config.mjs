// Lint: typescript-eslint's recommended rules, plus the architecture's boundaries:
// libs/domain stays pure (no framework, database, queue or I/O imports), and
// Prisma is imported only inside libs/persistence.
import tseslint from 'typescript-eslint';

const frameworkImports = ['@nestjs/*', '@prisma/*', '**/generated/prisma/**', 'bullmq', 'ioredis', 'pg', '@grpc/*', 'express', 'zod', 'node:fs', 'node:fs/*', 'node:child_process', 'node:net', 'fs', 'child_process', 'net'];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.cache/**', '.data/**', 'libs/contracts/src/generated/**', 'libs/persistence/src/generated/**', '**/*.mjs', '**/*.js'] },
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      'no-restricted-imports': ['error', { patterns: [{ group: ['@prisma/*', '**/generated/prisma/**'], message: 'Prisma is imported only in libs/persistence.' }] }],
    },
  },
  {
    files: ['libs/persistence/**/*.ts'],
    rules: { 'no-restricted-imports': 'off' },
  },
  {
    files: ['libs/domain/src/**/*.ts'],
    ignores: ['libs/domain/src/**/*.spec.ts'],
    rules: {
      'no-restricted-imports': ['error', { patterns: [{ group: frameworkImports, message: 'libs/domain is pure TypeScript: no framework, database, queue or I/O imports.' }] }],
    },
  },
);
