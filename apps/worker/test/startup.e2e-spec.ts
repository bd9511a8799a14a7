import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Client } from 'pg';
import { projectRoot } from '#platform';
import { freshDatabase, testServices } from '#testing/services';

/**
 * The worker entry point started on its own (no API before it) against an empty database:
 * it applies the migrations as the API's start does, and comes up; a second start applies none.
 */

const MAIN = resolve(__dirname, '../src/main.js');

interface Started {
  child: ChildProcess;
  output: () => string;
}

async function start(env: Record<string, string>): Promise<Started> {
  const child = spawn(process.execPath, [MAIN], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 90_000;
  while (!/executing operations/.test(out)) {
    if (child.exitCode !== null) throw new Error(`the worker exited with ${child.exitCode}:\n${out}`);
    if (Date.now() > deadline) throw new Error(`the worker did not come up in 90 s:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, output: () => out };
}

async function stop(s: Started): Promise<number | null> {
  if (s.child.exitCode !== null) return s.child.exitCode;
  s.child.kill('SIGTERM');
  return new Promise((r) => s.child.once('exit', (code) => r(code)));
}

describe('the worker entry point started alone', () => {
  const dataDir = mkdtempSync(join(tmpdir(), 'memplane-worker-start-'));
  chmodSync(dataDir, 0o755);
  let drop: (() => Promise<void>) | undefined;
  after(async () => {
    await drop?.();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('migrates an empty database, comes up, and applies nothing on a second start', async () => {
    const db = await freshDatabase({ empty: true });
    drop = db.drop;
    const env = { DATABASE_URL: db.url, REDIS_URL: testServices().redisUrl, MEMPLANE_QUEUE_PREFIX: `wstart${process.pid}`, MEMPLANE_DATA_DIR: dataDir };
    const migrations = readdirSync(join(projectRoot(), 'prisma', 'migrations'), { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => d.name)
      .sort();

    const first = await start(env);
    try {
      assert.match(first.output(), new RegExp(`migrations applied this start: ${migrations.join(', ')}\\n`));
      const client = new Client({ connectionString: db.url });
      await client.connect();
      try {
        const applied = await client.query<{ migration_name: string }>(`select migration_name from _prisma_migrations where finished_at is not null order by migration_name`);
        assert.deepEqual(applied.rows.map((r) => r.migration_name), migrations);
        // What the worker's own loops read (the outbox dispatcher, the sweeper) is there.
        const tables = await client.query<{ t: string | null }>(`select to_regclass('outbox')::text as t union all select to_regclass('operations')::text union all select to_regclass('vms')::text`);
        assert.deepEqual(tables.rows.map((r) => r.t), ['outbox', 'operations', 'vms']);
      } finally {
        await client.end();
      }
    } finally {
      assert.equal(await stop(first), 0, first.output());
    }
    assert.doesNotMatch(first.output(), /does not exist/, first.output());

    const second = await start(env);
    try {
      assert.match(second.output(), /migrations applied this start: none \(up to date\)/);
    } finally {
      assert.equal(await stop(second), 0, second.output());
    }
  });

  it('refuses a malformed worker setting with its name and the rule', async () => {
    const child = spawn(process.execPath, [MAIN], { env: { ...process.env, MEMPLANE_HOST_NODE_BINDING: 'sometimes' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise((r) => child.once('exit', r));
    assert.equal(code, 2);
    assert.match(out, /MEMPLANE_HOST_NODE_BINDING: .*"auto"\|"bind"\|"none"/);
  });
});
