import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { freshDatabase } from '#testing/services';
import { Database } from './database';
import { PgNotifications } from './notifications';

/** Hints (Sql.notify) reach LISTENers once the change commits, never for a rolled-back one. */
describe('change hints after commit (Postgres)', () => {
  let db: Database;
  let drop: () => Promise<void>;
  let notifications: PgNotifications;
  const heard: string[] = [];
  const waiters: (() => void)[] = [];
  const hear = async (n: number) => {
    const deadline = Date.now() + 10_000;
    while (heard.length < n && Date.now() < deadline) await new Promise<void>((r) => waiters.push(r) && setTimeout(r, 50));
    return [...heard];
  };

  before(async () => {
    const fresh = await freshDatabase();
    drop = fresh.drop;
    db = new Database({ url: fresh.url, poolSize: 4 });
    notifications = new PgNotifications(fresh.url);
    await new Promise<void>((listening) =>
      notifications.subscribe(
        'memplane_test',
        (payload) => {
          heard.push(payload);
          for (const w of waiters.splice(0)) w();
        },
        listening,
      ),
    );
  });
  after(async () => {
    await notifications?.close();
    await db?.close();
    await drop?.();
  });

  it('sends a transaction’s hints after its COMMIT, and none of a transaction that rolled back', async () => {
    heard.length = 0;
    await db.sqlTransaction(async (sql) => {
      await sql.query(`select 1`);
      sql.notify('memplane_test', 'committed');
      // Held until the commit: nothing is sent while the transaction is open.
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(heard, []);
    });
    await assert.rejects(
      db.sqlTransaction(async (sql) => {
        sql.notify('memplane_test', 'rolled-back');
        throw new Error('refused');
      }),
      /refused/,
    );
    db.sql.notify('memplane_test', 'autocommit');
    // Hints go out in order, so had the rolled-back one been sent it would come before this.
    assert.deepEqual(await hear(2), ['committed', 'autocommit']);
  });

  it('sends the hints of one moment together, once each', async () => {
    heard.length = 0;
    for (const p of ['a', 'b', 'a', 'c', 'b']) db.sql.notify('memplane_test', p);
    await db.hints.flushed();
    assert.deepEqual((await hear(3)).sort(), ['a', 'b', 'c']);
  });
});
