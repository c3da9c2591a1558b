import type { RouteApplierEnv } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import { DryRunBackend } from './dry-run.js';
import { IpsetBackend } from './ipset.js';
import { NftablesBackend } from './nftables.js';
import { RouteBackend } from './route.js';
import type { KernelBackend } from './types.js';

export { DryRunBackend, type WriteListener } from './dry-run.js';
export { IpsetBackend } from './ipset.js';
export { NftablesBackend } from './nftables.js';
export { RouteBackend } from './route.js';
export { BackendError, type KernelBackend, type WriteFailure } from './types.js';

/** The backend APPLIER_BACKEND names, configured from the environment. */
export function createBackend(config: RouteApplierEnv, logger: Logger): KernelBackend {
  const netns = config.APPLIER_NETNS;
  switch (config.APPLIER_BACKEND) {
    case 'route':
      return new RouteBackend({
        type: config.APPLIER_ROUTE_TYPE,
        proto: config.APPLIER_ROUTE_PROTO,
        netns,
        logger,
      });
    case 'ipset':
      return new IpsetBackend({
        name: config.APPLIER_SET_NAME,
        maxelem: config.APPLIER_IPSET_MAXELEM,
        netns,
        logger,
      });
    case 'nftables':
      return new NftablesBackend({ table: config.APPLIER_SET_NAME, netns, logger });
    case 'dry-run':
      return new DryRunBackend(logger);
  }
}
