import { Module, type DynamicModule } from '@nestjs/common';
import { APP_FILTER, APP_GUARD } from '@nestjs/core';
import { RUNTIME, type Runtime } from '../runtime';
import { ApiKeysController, HealthController } from './admin.controller';
import { AuthGuard } from './auth.guard';
import { ProblemFilter } from './exception.filter';
import { HostsController, PoolsController } from './inventory.controller';
import { OpenApiController } from './openapi';
import { TopologyController } from './topology.controller';
import { OperationsController, PoolLedgerController, VmsController } from './vm.controller';
import { WatchController } from './watch.controller';

@Module({})
export class RestModule {
  static forRuntime(runtime: Runtime): DynamicModule {
    return {
      module: RestModule,
      controllers: [HostsController, PoolsController, PoolLedgerController, VmsController, TopologyController, OperationsController, WatchController, ApiKeysController, HealthController, OpenApiController],
      providers: [
        { provide: RUNTIME, useValue: runtime },
        { provide: APP_GUARD, useClass: AuthGuard },
        { provide: APP_FILTER, useClass: ProblemFilter },
      ],
    };
  }
}
