#!/usr/bin/env node
// Generates every generated file; nothing generated is committed or hand-edited.
//  - Prisma client (libs/persistence/src/generated/prisma) from prisma/schema.prisma
//  - ts-proto gRPC code (libs/contracts/src/generated) from proto/ via buf
// Prisma's CLI insists on a schema-engine binary before `generate`, which needs
// none; it cannot be downloaded here, so point it at any existing file.
import { spawnSync } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => resolve(root, 'node_modules', '.bin', name);

function run(cmd, args, env = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  if (r.status !== 0) {
    process.stderr.write(r.stdout);
    process.stderr.write(r.stderr);
    console.error(`generate: ${cmd} ${args.join(' ')} failed`);
    process.exit(r.status ?? 1);
  }
}

run(bin('prisma'), ['generate', '--schema', 'prisma/schema.prisma'], {
  PRISMA_SCHEMA_ENGINE_BINARY: process.env.PRISMA_SCHEMA_ENGINE_BINARY ?? process.execPath,
  PRISMA_HIDE_UPDATE_MESSAGE: '1',
  CHECKPOINT_DISABLE: '1',
});
run(bin('buf'), ['generate']);
// The descriptor set that gRPC server reflection serves (real file names and imports).
run(bin('buf'), ['build', '-o', 'libs/contracts/src/generated/descriptor.binpb']);
console.log('generated: prisma client, gRPC contracts');
