/**
 * A HypervisorDriver wrapper for benchmarks: forwards every call to the real driver and
 * records when it started and ended, so a benchmark can say how many QMP/QGA calls an
 * operation made and how much of its time was spent in them (the rest is the control plane).
 */
import type { HypervisorDriver, QmpChannel, QmpCommandOptions } from '#hypervisor';

export interface TimedCall {
  vmId: string;
  method: string;
  startMs: number;
  endMs: number;
}

export function timedDriver(inner: HypervisorDriver): { driver: HypervisorDriver; calls: TimedCall[] } {
  const calls: TimedCall[] = [];
  const driver = new Proxy(inner, {
    get(target, prop, receiver) {
      const value = Reflect.get(target, prop, receiver) as unknown;
      if (typeof value !== 'function') return value;
      if (prop === 'status' || prop === 'eventCursor') return value.bind(target);
      if (prop === 'qmp') {
        // The raw channel: time its commands too (qom-list, qom-get).
        return (vmId: string) => {
          const channel = (value as HypervisorDriver['qmp']).call(target, vmId);
          const timed: QmpChannel = {
            execute: <T>(command: string, args?: Record<string, unknown>, opts?: QmpCommandOptions) => {
              const startMs = performance.now();
              return channel.execute<T>(command, args, opts).finally(() => {
                if (calls.length < 1_000_000) calls.push({ vmId, method: `qmp ${command}`, startMs, endMs: performance.now() });
              });
            },
            eventCursor: () => channel.eventCursor(),
            waitForEvent: (match, opts) => channel.waitForEvent(match, opts),
            onEvent: (listener) => channel.onEvent(listener),
          };
          return timed;
        };
      }
      return (...args: unknown[]) => {
        const startMs = performance.now();
        const out = (value as (...a: unknown[]) => unknown).apply(target, args);
        const done = () => {
          if (calls.length < 1_000_000) calls.push({ vmId: String(args[0]), method: String(prop), startMs, endMs: performance.now() });
        };
        if (out instanceof Promise) return out.finally(done);
        done();
        return out;
      };
    },
  });
  return { driver, calls };
}

/**
 * Calls that started within [fromMs, toMs], as "method ms" lines and totals, with the time
 * before the first of them began (`leadMs`) and after the last ended (`tailMs`).
 */
export function callsBetween(calls: readonly TimedCall[], fromMs: number, toMs: number): { n: number; busyMs: number; leadMs: number; tailMs: number; list: string[] } {
  const inside = calls.filter((c) => c.startMs >= fromMs && c.startMs <= toMs).sort((a, b) => a.startMs - b.startMs);
  let busyMs = 0;
  let until = fromMs;
  for (const c of inside) {
    const s = Math.max(c.startMs, until);
    if (c.endMs > s) busyMs += c.endMs - s;
    until = Math.max(until, c.endMs);
  }
  const leadMs = inside.length ? inside[0]!.startMs - fromMs : toMs - fromMs;
  const tailMs = inside.length ? toMs - Math.max(...inside.map((c) => c.endMs)) : 0;
  return { n: inside.length, busyMs, leadMs, tailMs, list: inside.map((c) => `+${(c.startMs - fromMs).toFixed(1)} ${c.method} ${(c.endMs - c.startMs).toFixed(1)}ms`) };
}
