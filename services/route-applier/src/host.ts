// What the host must never block: its own addresses and its default gateways (read from the kernel of
// the namespace the applier works in), plus loopback and the configured admin networks.
import { networkInterfaces } from 'node:os';
import { normalizeTarget } from '@banbus/core';
import type { Logger } from '@banbus/runtime';
import { inNamespace, runOk } from './backends/tool.js';
import { NeverBlock } from './never-block.js';

async function ipJson<T>(netns: string | undefined, args: string[]): Promise<T[]> {
  const [command, full] = inNamespace(netns, 'ip', ['-j', ...args]);
  const text = (await runOk(command, full)).trim();
  return text === '' ? [] : (JSON.parse(text) as T[]);
}

/** The host's addresses and default gateways; without `ip`, the addresses Node sees (no gateways). */
export async function hostAddresses(netns: string | undefined, logger: Logger): Promise<string[]> {
  const found: string[] = [];
  const add = (text: string | undefined) => {
    if (!text) return;
    try {
      found.push(normalizeTarget(text.split('%')[0]!));
    } catch {
      // not an address (e.g. "default")
    }
  };
  try {
    const links = await ipJson<{ addr_info?: { local?: string }[] }>(netns, ['addr', 'show']);
    for (const link of links) for (const a of link.addr_info ?? []) add(a.local);
    for (const family of ['-4', '-6']) {
      const routes = await ipJson<{ gateway?: string; nexthops?: { gateway?: string }[] }>(netns, [
        family,
        'route',
        'show',
        'default',
      ]);
      for (const r of routes) {
        add(r.gateway);
        for (const hop of r.nexthops ?? []) add(hop.gateway);
      }
    }
  } catch (err) {
    if (netns) throw err;
    logger.warn(
      { err: (err as Error).message },
      'cannot ask ip for addresses and gateways; using the interfaces Node sees',
    );
    for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) add(a.address);
  }
  return [...new Set(found)];
}

export async function detectNeverBlock(
  netns: string | undefined,
  configured: readonly string[],
  logger: Logger,
): Promise<NeverBlock> {
  const own = await hostAddresses(netns, logger);
  const neverBlock = new NeverBlock([...own, ...configured]);
  logger.info({ neverBlock: neverBlock.list() }, 'never-block list');
  return neverBlock;
}
