import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { freePort } from '#platform';

const MAIN = resolve(__dirname, '../src/main.js');


interface Started {
  child: ChildProcess;
  output: () => string;
  http: string;
  key?: string;
}

/** Runs the real entry point (what `npm start` runs after building) and waits for it to print its endpoints. */
async function start(env: Record<string, string>): Promise<Started> {
  const child = spawn(process.execPath, [MAIN], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const deadline = Date.now() + 90_000;
  while (!/gRPC {2}\S+/.test(out) || (out.includes('shown once') && !/\nmp_\S+\n/.test(out))) {
    if (child.exitCode !== null) throw new Error(`memplane exited with ${child.exitCode}:\n${out}`);
    if (Date.now() > deadline) throw new Error(`memplane did not start in 90 s:\n${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const http = /REST {2}(http:\/\/\S+)/.exec(out)![1]!;
  const key = /\n(mp_[A-Za-z0-9]{8}_\S+)\n/.exec(out)?.[1];
  return { child, output: () => out, http, ...(key ? { key } : {}) };
}

async function stop(s: Started): Promise<number | null> {
  s.child.kill('SIGTERM');
  return new Promise((r) => s.child.once('exit', (code) => r(code)));
}

describe('the service entry point on its embedded default', () => {
  const dir = mkdtempSync(join(tmpdir(), 'memplane-start-'));
  chmodSync(dir, 0o755);
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('starts embedded Postgres and Redis, migrates, prints the key once, and restarts cleanly', async () => {
    const env = {
      MEMPLANE_DATA_DIR: join(dir, 'data'),
      MEMPLANE_HTTP_PORT: String(await freePort()),
      MEMPLANE_GRPC_PORT: String(await freePort()),
      MEMPLANE_EMBEDDED_PG_PORT: String(await freePort()),
      MEMPLANE_EMBEDDED_REDIS_PORT: String(await freePort()),
      DATABASE_URL: '',
      REDIS_URL: '',
    };
    delete (env as Record<string, string | undefined>).DATABASE_URL;
    delete (env as Record<string, string | undefined>).REDIS_URL;
    const childEnv = { ...env };
    const first = await start(childEnv);
    try {
      assert.match(first.output(), /migrations applied this start: \d{14}_init/);
      assert.match(first.output(), /Postgres embedded/);
      assert.ok(first.key, `no key printed:\n${first.output()}`);
      const ready = await fetch(`${first.http}/readyz`);
      assert.equal(ready.status, 200);
      const hosts = await fetch(`${first.http}/v1/hosts`, { headers: { authorization: `Bearer ${first.key}` } });
      assert.equal(hosts.status, 200);
    } finally {
      assert.equal(await stop(first), 0, first.output());
    }
    const second = await start(childEnv);
    try {
      assert.match(second.output(), /migrations applied this start: none \(up to date\)/);
      assert.equal(second.key, undefined, 'the key is printed only on the first start');
      const hosts = await fetch(`${second.http}/v1/hosts`, { headers: { authorization: `Bearer ${first.key}` } });
      assert.equal(hosts.status, 200, 'the first start\'s key still works');
    } finally {
      assert.equal(await stop(second), 0, second.output());
    }
  });

  it('refuses a malformed configuration with the setting\'s name', async () => {
    const child = spawn(process.execPath, [MAIN], { env: { ...process.env, MEMPLANE_HTTP_PORT: 'eighty' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise((r) => child.once('exit', r));
    assert.equal(code, 2);
    assert.match(out, /MEMPLANE_HTTP_PORT/);
  });
});
