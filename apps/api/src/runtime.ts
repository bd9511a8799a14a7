import { Redis } from 'ioredis';
import { ApiKeyService, HostService, LedgerService, MemoryGroupService, Mutations, OperationService, PoolService, TopologyService, VmService, WatchService } from '#application';
import { Database, OPERATION_CHANNEL, PgNotifications } from '#persistence';
import type { AppConfig } from '#platform';
import { OperationRelay } from './operation-relay';

/**
 * Everything a transport needs, built once per process. Transports are thin:
 * they translate and call these services, so REST, gRPC and the queue intake
 * validate and behave identically.
 */
export class Runtime {
  readonly mutations: Mutations;
  readonly hosts: HostService;
  readonly pools: PoolService;
  readonly apiKeys: ApiKeyService;
  readonly vms: VmService;
  readonly memoryGroups: MemoryGroupService;
  readonly operations: OperationService;
  readonly ledger: LedgerService;
  readonly topology: TopologyService;
  readonly watch: WatchService;

  constructor(
    readonly config: AppConfig,
    readonly db: Database,
    readonly redis: Redis,
    /** Postgres LISTEN (operation state changes for watchers); without it watchers only poll. */
    readonly notifications?: PgNotifications,
    /** Queues each operation this process records once it commits (the dispatchers' fast path). */
    readonly relay?: OperationRelay,
  ) {
    this.mutations = new Mutations(db);
    this.hosts = new HostService(this.mutations);
    this.pools = new PoolService(this.mutations);
    this.apiKeys = new ApiKeyService(this.mutations);
    this.vms = new VmService(this.mutations);
    this.memoryGroups = new MemoryGroupService(this.mutations);
    this.operations = new OperationService(this.mutations);
    this.ledger = new LedgerService(this.mutations);
    this.topology = new TopologyService(this.mutations);
    this.watch = new WatchService(this.operations, this.vms, {
      ...(notifications ? { operationChanges: (listener: (operationId: string) => void, onListening: () => void) => notifications.subscribe(OPERATION_CHANNEL, listener, onListening) } : {}),
    });
  }

  static create(config: AppConfig, urls: { databaseUrl: string; redisUrl: string }): Runtime {
    const db = new Database({ url: urls.databaseUrl });
    const redis = new Redis(urls.redisUrl, { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: false });
    redis.on('error', () => undefined); // readiness reports it; do not crash on a Redis blip
    const relay = new OperationRelay(db.hints, urls.redisUrl, config.worker.queuePrefix);
    return new Runtime(config, db, redis, new PgNotifications(urls.databaseUrl), relay);
  }

  async readiness(): Promise<{ postgres: string; redis: string; ready: boolean }> {
    const timeout = <T>(p: Promise<T>) => Promise.race([p, new Promise<T>((_, rej) => setTimeout(() => rej(new Error('timeout')), 2000))]);
    const postgres = await timeout(this.db.ping()).then(() => 'ok', (e: Error) => `unreachable: ${e.message}`);
    const redis = await timeout(this.redis.ping()).then(() => 'ok', (e: Error) => `unreachable: ${e.message}`);
    return { postgres, redis, ready: postgres === 'ok' && redis === 'ok' };
  }

  async close(): Promise<void> {
    await this.relay?.close();
    await this.notifications?.close();
    this.redis.disconnect();
    await this.db.close();
  }
}

export const RUNTIME = Symbol('memplane.runtime');
