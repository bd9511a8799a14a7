import type { AppConfig } from './config';
import { startEmbeddedPostgres } from './embedded-postgres';
import { startEmbeddedRedis } from './embedded-redis';
import { applyMigrations } from './migrations';

/** Postgres and Redis as a process needs them: reachable, and the schema up to date. */
export interface DataServices {
  databaseUrl: string;
  redisUrl: string;
  /** Migrations this start applied (empty when the database was up to date). */
  appliedMigrations: string[];
  /** Stops the embedded servers this call started (external ones are left alone). */
  stop(): Promise<void>;
}

/**
 * What every entry point does first, the API and a standalone worker alike: the external
 * Postgres and Redis of DATABASE_URL / REDIS_URL or the embedded ones, then the pending
 * migrations (serialised across processes booting at once by migrate.mjs's advisory lock).
 */
export async function startDataServices(config: AppConfig, log: (line: string) => void = () => undefined): Promise<DataServices> {
  const stops: (() => Promise<void>)[] = [];
  const stop = async () => {
    for (const s of stops.reverse()) await s().catch((e: unknown) => log(`shutdown: ${String(e)}`));
  };
  try {
    let databaseUrl: string;
    if ('url' in config.database) databaseUrl = config.database.url.reveal();
    else {
      const pg = await startEmbeddedPostgres({ ...config.database.embedded, log });
      stops.push(pg.stop);
      databaseUrl = pg.url;
    }
    let redisUrl: string;
    if ('url' in config.redis) redisUrl = config.redis.url.reveal();
    else {
      const redis = await startEmbeddedRedis({ ...config.redis.embedded, log });
      stops.push(redis.stop);
      redisUrl = redis.url;
    }
    const appliedMigrations = await applyMigrations(databaseUrl);
    return { databaseUrl, redisUrl, appliedMigrations, stop };
  } catch (e) {
    await stop();
    throw e;
  }
}
