import { loadConfigOrExit, startDataServices } from '#platform';
import { startWorker, workerOptionsOf } from './worker';

/**
 * The worker: executes Operations against QEMU on this host. It shares the API's
 * configuration (DATABASE_URL / REDIS_URL, or the same embedded servers) and its start:
 * the same data services and the same migrations, so a worker started alone on an empty
 * database comes up as the API would.
 */
async function main(): Promise<void> {
  const config = loadConfigOrExit();
  const log = (line: string) => console.log(`[memplane-worker] ${line}`);
  const data = await startDataServices(config, log);
  const running = await startWorker({ ...workerOptionsOf(config, data), log });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: shutting down`);
    void running
      .stop()
      .then(() => data.stop())
      .then(() => process.exit(0));
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
  log(`migrations applied this start: ${data.appliedMigrations.length ? data.appliedMigrations.join(', ') : 'none (up to date)'}`);
  log(`executing operations from Redis ${'url' in config.redis ? '(REDIS_URL)' : `local redis-server on port ${config.redis.embedded.port}`}; VMs run detached and survive this process`);
}

main().catch((e: unknown) => {
  console.error(`[memplane-worker] failed to start: ${(e as Error)?.stack ?? String(e)}`);
  process.exit(1);
});
