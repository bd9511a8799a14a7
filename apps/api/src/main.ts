import { loadConfigOrExit } from '#platform';
import { startWorker, workerOptionsOf } from '../../worker/src/worker';
import { startMemplane } from './server';

async function main(): Promise<void> {
  const config = loadConfigOrExit();
  const log = (line: string) => console.log(`[memplane] ${line}`);
  const running = await startMemplane(config, log);
  // One command runs everything on the embedded default: a worker executes operations in
  // this process too, unless MEMPLANE_WORKER=off (run apps/worker separately, as many as wanted).
  const worker =
    config.worker.mode === 'embedded'
      ? await startWorker({ ...workerOptionsOf(config, running), log: (line) => console.log(`[memplane-worker] ${line}`) })
      : undefined;
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log(`${signal}: shutting down`);
    void (worker?.stop() ?? Promise.resolve()).then(() => running.stop()).then(() => process.exit(0));
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));

  // Printed last: once these lines are out, the service is fully up and stops cleanly on a signal.
  log(`migrations applied this start: ${running.appliedMigrations.length ? running.appliedMigrations.join(', ') : 'none (up to date)'}`);
  if (worker) log('worker: executing operations in this process (MEMPLANE_WORKER=off to run apps/worker separately)');
  log(`Postgres ${'url' in config.database ? 'external (DATABASE_URL)' : `embedded, data in ${config.database.embedded.dir}`}; Redis ${'url' in config.redis ? 'external (REDIS_URL)' : `local redis-server on port ${config.redis.embedded.port}`}`);
  log(`REST  ${running.httpUrl}  (OpenAPI ${running.httpUrl}/openapi.json, docs ${running.httpUrl}/docs)`);
  if (running.bootstrapKey?.generated) {
    log('bootstrap admin API key (shown once, stored only as a hash):');
    console.log(running.bootstrapKey.key);
  } else if (running.bootstrapKey) {
    log('bootstrap admin API key registered from MEMPLANE_BOOTSTRAP_KEY');
  }
  log(`gRPC  ${running.grpcAddress}${config.grpcTls ? ' (TLS' + (config.grpcTls.clientCaPath ? ', mutual' : '') + ')' : ' (plaintext)'}`);
}

main().catch((e: unknown) => {
  console.error(`[memplane] failed to start: ${(e as Error)?.stack ?? String(e)}`);
  process.exit(1);
});
