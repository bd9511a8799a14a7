#!/usr/bin/env node
// Runs the compiled test suite with Node's own test runner, against real
// services: it starts one embedded Postgres (with a migrated template database
// each test copies) and one redis-server for the whole run, and stops them after.
//
//   node scripts/test.mjs                 every tier
//   node scripts/test.mjs --tier unit     *.spec.js only (no services)
//   node scripts/test.mjs --tier integration|e2e
//   node scripts/test.mjs dist/path/x.int-spec.js ...   just these files
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, rmSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const args = process.argv.slice(2);
const tierIdx = args.indexOf('--tier');
const tier = tierIdx >= 0 ? args[tierIdx + 1] : 'all';
const explicit = args.filter((a, i) => a.endsWith('.js') && (tierIdx < 0 || i !== tierIdx + 1));

const TIERS = { unit: /\.spec\.js$/, integration: /\.int-spec\.js$/, e2e: /\.e2e-spec\.js$/ };

function walk(dir, out = []) {
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) walk(p, out);
    else out.push(p);
  }
  return out;
}

const all = walk(join(root, 'dist')).filter((f) => /\.(spec|int-spec|e2e-spec)\.js$/.test(f)).sort();
const files = explicit.length
  ? explicit.map((f) => resolve(f))
  : all.filter((f) => (tier === 'all' ? true : TIERS[tier]?.test(f) && !(tier === 'unit' && /\.(int|e2e)-spec\.js$/.test(f))));
if (files.length === 0) {
  console.error(`no test files for tier ${tier}; did the build run?`);
  process.exit(1);
}
const needsServices = files.some((f) => /\.(int|e2e)-spec\.js$/.test(f));

async function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => res(port));
    });
  });
}

const env = { ...process.env };
const stops = [];
if (needsServices) {
  const platform = require(join(root, 'dist/libs/platform/src/index.js'));
  const dataDir = join(root, '.cache', `test-run-${process.pid}`);
  rmSync(dataDir, { recursive: true, force: true });
  mkdirSync(dataDir, { recursive: true });
  const t0 = Date.now();
  const pg = await platform.startEmbeddedPostgres({ dir: join(dataDir, 'postgres'), port: await freePort(), database: 'memplane_template' });
  stops.push(async () => {
    await pg.stop();
    rmSync(dataDir, { recursive: true, force: true });
  });
  await platform.applyMigrations(pg.url);
  const redis = await platform.startEmbeddedRedis({ dir: join(dataDir, 'redis'), port: await freePort() });
  stops.push(redis.stop);
  env.MEMPLANE_TEST_PG_TEMPLATE_URL = pg.url;
  env.MEMPLANE_TEST_REDIS_URL = redis.url;
  console.log(`# test services: Postgres ${pg.url.replace(/:[^:@]*@/, ':***@')}, Redis ${redis.url} (up in ${Date.now() - t0} ms)`);
}

const concurrency = process.env.MEMPLANE_TEST_CONCURRENCY ?? '2';
const child = spawn(process.execPath, ['--enable-source-maps', '--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files], {
  cwd: root,
  env,
  stdio: 'inherit',
});
const code = await new Promise((res) => child.once('exit', (c, sig) => res(c ?? (sig ? 1 : 0))));
for (const stop of stops.reverse()) await stop().catch((e) => console.error(`stopping test services: ${e}`));
process.exit(code);
