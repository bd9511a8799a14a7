import { loadConfigOrExit, startEmbeddedPostgres, startEmbeddedRedis } from '#platform';
import { executorConfigOf, startWorker } from './worker';

/**
 * The worker: executes Operations against QEMU on this host. It shares the API's
 * configuration (DATABASE_URL / REDIS_URL, or the same embedded servers).
 */
async function main(): Promise<void> {
  const config = loadConfigOrExit();
  const log = (line: string) => console.log(`[memplane-worker] ${line}`);
  const databaseUrl = 'url' in config.database ? config.database.url.reveal() : (await startEmbeddedPostgres({ ...config.database.embedded, log })).url;
  const redisUrl = 'url' in config.redis ? config.redis.url.reveal() : (await startEmbeddedRedis({ ...config.redis.embedded, log })).url;
  const running = await startWorker({
    databaseUrl,
    redisUrl,
    prefix: config.worker.queuePrefix,
    concurrency: config.worker.concurrency,
    executor: executorConfigOf(config),
    log,
  });
  log(`executing operations from Redis ${redisUrl}; VMs run detached and survive this process`);
  const stop = () => void running.stop().then(() => process.exit(0));
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((e: unknown) => {
  console.error(`[memplane-worker] failed to start: ${(e as Error)?.stack ?? String(e)}`);
  process.exit(1);
});
