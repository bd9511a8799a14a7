import type { HostModel } from './host';
import type { GuestNode } from './types';
import { SLIT_LOCAL } from './validate';

/**
 * Guest SLIT, [from][to]: the host distance between the host memory nodes behind the two
 * guest nodes (HostModel.distance documents the fallbacks for missing host entries). Two
 * different guest nodes on the same host node get 11, not 10: Linux discards the whole SLIT if
 * an off-diagonal entry is ≤ 10 (drivers/acpi/numa/srat.c slit_valid), while QEMU would accept
 * it (hw/core/numa.c parse_numa_distance only needs ≥ 10 and self = 10).
 * Every ordered pair is emitted, so QEMU's symmetric fill never applies.
 */
export function guestDistanceMatrix(nodes: GuestNode[], host: HostModel, warnings: string[] = []): number[][] {
  return nodes.map((a) =>
    nodes.map((b) => {
      if (a.guestNodeId === b.guestNodeId) return SLIT_LOCAL;
      if (a.hostNodeId === b.hostNodeId) return SLIT_LOCAL + 1;
      const d = host.distance(a.hostNodeId, b.hostNodeId);
      if (d.source !== 'host' && d.source !== 'symmetric')
        warnings.push(`SLIT ${a.guestNodeId}→${b.guestNodeId} = ${d.distance}: host distance ${a.hostNodeId}→${b.hostNodeId} missing, derived (${d.source})`);
      return d.distance;
    }),
  );
}
