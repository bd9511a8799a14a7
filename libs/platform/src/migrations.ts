import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** The repository root: the nearest folder up from here that holds scripts/migrate.mjs. */
export function projectRoot(from: string = __dirname): string {
  let dir = from;
  for (;;) {
    if (existsSync(join(dir, 'scripts', 'migrate.mjs')) && existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find the Memplane project root above ${from}`);
    dir = up;
  }
}

/**
 * Applies pending migrations in a child process (the WebAssembly schema engine
 * needs a Node flag the service itself does not run with). Idempotent: a second
 * run applies nothing.
 */
export function applyMigrations(databaseUrl: string): Promise<string[]> {
  const script = join(projectRoot(), 'scripts', 'migrate.mjs');
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--experimental-wasm-modules', '--no-warnings', script], {
      env: { ...process.env, DATABASE_URL: databaseUrl },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) return reject(new Error(err.trim() || `migrate.mjs exited with ${code}`));
      const last = out.trim().split('\n').pop() ?? '{}';
      resolve((JSON.parse(last) as { applied: string[] }).applied);
    });
  });
}
