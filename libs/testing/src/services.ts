import { randomBytes } from 'node:crypto';
import { Client } from 'pg';

/**
 * Test access to the real Postgres and Redis that scripts/test.mjs starts.
 * Each test gets its own database, copied from a migrated template, so tests
 * run in parallel without seeing each other.
 */
export function testServices(): { templateUrl: string; redisUrl: string } {
  const templateUrl = process.env.MEMPLANE_TEST_PG_TEMPLATE_URL;
  const redisUrl = process.env.MEMPLANE_TEST_REDIS_URL;
  if (!templateUrl || !redisUrl) {
    throw new Error('integration tests need the services scripts/test.mjs starts: run them with `npm test` or `node scripts/test.mjs <file>`');
  }
  return { templateUrl, redisUrl };
}

/** A database of its own: a copy of the migrated template, or (`empty`) one with no schema at all. */
export async function freshDatabase(opts: { empty?: boolean } = {}): Promise<{ url: string; drop: () => Promise<void> }> {
  const { templateUrl } = testServices();
  const name = `t_${randomBytes(6).toString('hex')}`;
  const admin = new URL(templateUrl);
  const template = admin.pathname.slice(1);
  admin.pathname = '/postgres';
  const client = new Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    // CREATE DATABASE ... TEMPLATE fails if another copy is being made at the same instant.
    for (let attempt = 0; ; attempt++) {
      try {
        await client.query(opts.empty ? `create database ${name}` : `create database ${name} template ${template}`);
        break;
      } catch (e) {
        if (attempt > 20 || !/being accessed by other users/.test(String(e))) throw e;
        await new Promise((r) => setTimeout(r, 100 + Math.random() * 200));
      }
    }
  } finally {
    await client.end();
  }
  const url = new URL(templateUrl);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    drop: async () => {
      const c = new Client({ connectionString: admin.toString() });
      await c.connect();
      await c.query(`drop database if exists ${name} with (force)`).finally(() => c.end());
    },
  };
}
