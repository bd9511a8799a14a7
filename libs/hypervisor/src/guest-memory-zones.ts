import { DomainError } from '#domain';
import type { GuestMemoryBlockResponse, GuestMemoryBlockResult, QgaChannel } from './qga-client';

/**
 * Zone-exact onlining and zone inspection of guest memory blocks through the guest agent.
 *
 * `guest-set-memory-blocks` only ever writes "online"/"offline" to
 * `/sys/devices/system/memory/memory<N>/state`, so the zone follows the guest's
 * `online_policy` (domain spec §4, §7). To honour ONLINE_MOVABLE / ONLINE_KERNEL exactly we
 * write `online_movable` / `online_kernel` ourselves with `guest-exec` of `sh -c` (one exec
 * for all blocks) and read the zone back from `valid_zones`. This needs `guest-exec` enabled
 * in the agent (Debian's qemu-ga allows it unless started with `--block-rpcs`/`-b
 * guest-exec` or an `allow-rpcs` list without it) and a POSIX `sh`, `cat` and `timeout`
 * (busybox or coreutils) in the guest's PATH. A disabled guest-exec surfaces as the agent's
 * own error (`QGA_GENERIC_ERROR` / `QGA_COMMAND_NOT_FOUND`, "The command guest-exec has been
 * disabled ...").
 *
 * Nothing here can hang the guest side forever: every script runs under the guest's own
 * `timeout -s KILL`, and offlining goes through a script too (each block's write under its own
 * `timeout`) rather than `guest-set-memory-blocks`. The agent runs its commands one at a
 * time, and the kernel's offline_pages() retries migration until the writer gets a fatal
 * signal (pinned pages, for instance): written by the agent itself, such an offline would
 * stall every later agent command for good. A killed write ends offline_pages() with EINTR
 * and the block stays online.
 */

/** How long one guest script may run before the guest kills it. */
export const GUEST_SCRIPT_TIMEOUT_S = 45;
/** How long the guest may try to offline one block before the write is killed. */
export const GUEST_OFFLINE_BLOCK_TIMEOUT_S = 20;

/** What is written to a block's `state`: plain (guest policy decides the zone) or zone-exact. */
export type GuestOnlineType = 'online' | 'online_movable' | 'online_kernel';

export const GUEST_ONLINE_TYPES: readonly GuestOnlineType[] = ['online', 'online_movable', 'online_kernel'];

/** One block as the guest's sysfs shows it. */
export interface GuestMemoryBlockZone {
  physIndex: number;
  /** False when `/sys/devices/system/memory/memory<N>` does not exist (not added, or removed). */
  present: boolean;
  online: boolean;
  /** The raw `state`: "online", "offline", "going-offline". */
  state?: string;
  /**
   * For an online block, the zone it is in ("Movable", "Normal", "DMA32", or "none" when the
   * block spans several zones, which only boot memory does).
   */
  zone?: string;
  /** For an offline block, the zones `online` could pick, the default first. */
  validZones?: string[];
}

/** The kernel's names for the zones that are not ZONE_MOVABLE, i.e. what online_kernel gives. */
export function isKernelZone(zone: string): boolean {
  return zone !== 'Movable' && zone !== 'none' && zone !== '';
}

/** Does an online block in `zone` satisfy a request to online it as `type`? */
export function zoneSatisfies(type: GuestOnlineType, zone: string): boolean {
  if (type === 'online_movable') return zone === 'Movable';
  if (type === 'online_kernel') return isKernelZone(zone);
  return true;
}

// Linux x86_64 errno values for the strerror texts a failed sysfs write reports (glibc and
// musl/busybox spell these the same). Whatever else comes back keeps its text, no number.
const ERRNO_BY_TEXT: readonly [string, number, string][] = [
  ['Operation not permitted', 1, 'EPERM'],
  ['No such file or directory', 2, 'ENOENT'],
  ['Interrupted system call', 4, 'EINTR'],
  ['Input/output error', 5, 'EIO'],
  ['No such device or address', 6, 'ENXIO'],
  ['Resource temporarily unavailable', 11, 'EAGAIN'],
  ['Cannot allocate memory', 12, 'ENOMEM'],
  ['Out of memory', 12, 'ENOMEM'],
  ['Permission denied', 13, 'EACCES'],
  ['Device or resource busy', 16, 'EBUSY'],
  ['Resource busy', 16, 'EBUSY'],
  ['File exists', 17, 'EEXIST'],
  ['No such device', 19, 'ENODEV'],
  ['Invalid argument', 22, 'EINVAL'],
  ['No space left on device', 28, 'ENOSPC'],
  ['Read-only file system', 30, 'EROFS'],
  ['Numerical result out of range', 34, 'ERANGE'],
  ['Operation not supported', 95, 'EOPNOTSUPP'],
  ['Not supported', 95, 'EOPNOTSUPP'],
];

/** errno (and its name) from a shell's write-error message, e.g. "sh: write error: Device or resource busy". */
export function errnoFromMessage(message: string): { errorCode: number; errno: string } | undefined {
  for (const [text, code, name] of ERRNO_BY_TEXT) {
    if (message.includes(text)) return { errorCode: code, errno: name };
  }
  return undefined;
}

/** "EBUSY" for 16, when known. */
export function errnoName(code: number): string | undefined {
  return ERRNO_BY_TEXT.find(([, c]) => c === code)?.[2];
}

/** INVALID_ARGUMENT unless every index is a non-negative integer (they end up in sysfs paths). */
export function checkBlockIndexes(physIndexes: readonly number[]): void {
  const bad = physIndexes.filter((i) => !Number.isSafeInteger(i) || i < 0);
  if (bad.length > 0) {
    throw DomainError.invalid('INVALID_MEMORY_BLOCK', [{ field: 'physIndexes', description: `not block indexes: ${bad.join(', ')}` }]);
  }
}

// Each script prints one line per block: "<N>|<status>|<field>|<field>". `set -f` keeps an
// unquoted error text from being globbed; `echo $x` (unquoted) folds it onto one line.
// For a write: stderr is joined to the captured output *before* stdout goes to `state`, so
// the shell's own message (redirection or write error) is what we capture.
const ONLINE_SCRIPT = `set -f
want=$1; shift
for n in "$@"; do
  d=/sys/devices/system/memory/memory$n
  if [ ! -d "$d" ]; then echo "$n|not-found||"; continue; fi
  st=$(cat "$d/state" 2>/dev/null)
  if [ "$st" = online ]; then echo "$n|already|$(cat "$d/valid_zones" 2>/dev/null)|"; continue; fi
  if err=$(echo "$want" 2>&1 >"$d/state"); then
    echo "$n|ok|$(cat "$d/valid_zones" 2>/dev/null)|"
  else
    echo "$n|failed||"$err
  fi
done
`;

// Exit status 137 (128 + SIGKILL; busybox and coreutils alike with -s KILL) or 124: the write was killed.
const OFFLINE_SCRIPT = `set -f
secs=$1; shift
for n in "$@"; do
  d=/sys/devices/system/memory/memory$n
  if [ ! -d "$d" ]; then echo "$n|not-found||"; continue; fi
  if [ "$(cat "$d/state" 2>/dev/null)" = offline ]; then echo "$n|already||"; continue; fi
  err=$(timeout -s KILL "$secs" sh -c 'echo offline >"$1"' sh "$d/state" 2>&1)
  rc=$?
  if [ $rc = 0 ]; then echo "$n|ok||"
  elif [ $rc = 137 ] || [ $rc = 124 ]; then echo "$n|timeout||"
  else echo "$n|failed||"$err; fi
done
`;

const ZONES_SCRIPT = `set -f
for n in "$@"; do
  d=/sys/devices/system/memory/memory$n
  if [ ! -d "$d" ]; then echo "$n|absent||"; continue; fi
  echo "$n|present|$(cat "$d/state" 2>/dev/null)|"$(cat "$d/valid_zones" 2>/dev/null)
done
`;

interface ScriptLine {
  physIndex: number;
  status: string;
  a: string;
  b: string;
}

/** Parses the scripts' "<N>|<status>|<a>|<b>" lines (b may itself contain '|'). */
export function parseScriptLines(stdout: string): Map<number, ScriptLine> {
  const out = new Map<number, ScriptLine>();
  for (const raw of stdout.split('\n')) {
    const m = /^(\d+)\|([a-z-]+)\|([^|]*)\|(.*)$/.exec(raw.trim());
    if (!m) continue;
    const physIndex = Number(m[1]);
    out.set(physIndex, { physIndex, status: m[2]!, a: m[3]!.trim(), b: m[4]!.trim() });
  }
  return out;
}

/** A script's parsed lines, and what it printed. */
interface ScriptOutput {
  lines: Map<number, ScriptLine>;
  stdout: string;
  stderr: string;
}

async function runScript(qga: QgaChannel, what: string, script: string, args: readonly string[], timeoutS = GUEST_SCRIPT_TIMEOUT_S): Promise<ScriptOutput> {
  // The guest kills the script itself, so nothing is left running there; the agent is given
  // a little longer to report that than the script has.
  const r = await qga.exec('timeout', ['-s', 'KILL', String(timeoutS), 'sh', '-c', script, 'sh', ...args], { timeoutMs: (timeoutS + 15) * 1000 });
  const stdout = r.stdout.toString('utf8');
  if (r.signal === 9 || r.exitCode === 137 || r.exitCode === 124) {
    throw new DomainError('DEADLINE_EXCEEDED', 'GUEST_EXEC_TIMEOUT', `${what}: the guest script did not finish within ${timeoutS} s and was killed`, [], {
      timeoutS: String(timeoutS),
    });
  }
  if (r.exitCode !== 0) {
    throw new DomainError('INTERNAL', 'GUEST_EXEC_FAILED', `${what}: sh in the guest exited ${r.exitCode ?? `by signal ${r.signal}`}: ${r.stderr.toString('utf8').trim()}`, [], {
      exitCode: String(r.exitCode),
      stderr: r.stderr.toString('utf8').slice(0, 2000),
    });
  }
  return { lines: parseScriptLines(stdout), stdout, stderr: r.stderr.toString('utf8') };
}

function missingLine(what: string, physIndex: number, out: ScriptOutput): DomainError {
  // What the guest printed goes with the error: a missing line has no known cause yet (seen once in bench:ops).
  const printed = out.stdout.trim() || '(nothing)';
  return new DomainError('INTERNAL', 'GUEST_EXEC_FAILED', `${what}: the guest script printed nothing for memory${physIndex}; it printed ${JSON.stringify(printed.slice(0, 300))}`, [], {
    physIndex: String(physIndex),
    lines: String(out.lines.size),
    stdout: out.stdout.slice(0, 2000),
    stderr: out.stderr.slice(0, 2000),
  });
}

/**
 * Writes `online_movable` / `online_kernel` to each block's `state` in one guest-exec and
 * reports per block, in the order asked:
 * - `success` with the resulting `zone` (also for a block already online in a satisfying zone:
 *   idempotent, like the agent's own "already in the requested state");
 * - `operation-failed` for a block already online in another zone (`message` names it; a
 *   block cannot change zone without going offline first), or when the write failed:
 *   `errorCode` is the errno when the shell's message names a known one, and `message` the
 *   shell's text;
 * - `not-found` for a block that does not exist.
 */
export async function onlineBlocksInZone(
  qga: QgaChannel,
  physIndexes: readonly number[],
  type: Exclude<GuestOnlineType, 'online'>,
): Promise<GuestMemoryBlockResponse[]> {
  checkBlockIndexes(physIndexes);
  if (physIndexes.length === 0) return [];
  const what = `${type} memory blocks`;
  const out = await runScript(qga, what, ONLINE_SCRIPT, [type, ...physIndexes.map(String)]);
  return physIndexes.map((physIndex): GuestMemoryBlockResponse => {
    const line = out.lines.get(physIndex);
    if (!line) throw missingLine(what, physIndex, out);
    switch (line.status) {
      case 'not-found':
        return { physIndex, response: 'not-found', message: `memory${physIndex} does not exist in the guest` };
      case 'ok':
        return { physIndex, response: 'success', zone: line.a };
      case 'already':
        return zoneSatisfies(type, line.a)
          ? { physIndex, response: 'success', zone: line.a }
          : {
              physIndex,
              response: 'operation-failed',
              zone: line.a,
              message: `memory${physIndex} is already online in zone ${line.a || '?'}; ${type} needs it offline first`,
            };
      default: {
        const errno = errnoFromMessage(line.b);
        const response: GuestMemoryBlockResult = errno?.errno === 'EOPNOTSUPP' ? 'operation-not-supported' : 'operation-failed';
        return {
          physIndex,
          response,
          ...(errno ? { errorCode: errno.errorCode } : {}),
          message: `write ${type} to memory${physIndex}/state: ${line.b || 'failed'}`,
        };
      }
    }
  });
}

/**
 * Writes `offline` to each block's `state` in one guest-exec, each write bounded by
 * `GUEST_OFFLINE_BLOCK_TIMEOUT_S`, and reports per block in the order asked (the same
 * answers `guest-set-memory-blocks` gives): `success` (also for a block already offline),
 * `not-found`, or `operation-failed` with the errno the kernel gave (EBUSY: unmovable pages)
 * or, for a write that was killed, a message saying so.
 */
export async function offlineBlocks(qga: QgaChannel, physIndexes: readonly number[], blockTimeoutS = GUEST_OFFLINE_BLOCK_TIMEOUT_S): Promise<GuestMemoryBlockResponse[]> {
  checkBlockIndexes(physIndexes);
  if (physIndexes.length === 0) return [];
  const what = 'offline memory blocks';
  const out = await runScript(qga, what, OFFLINE_SCRIPT, [String(blockTimeoutS), ...physIndexes.map(String)], physIndexes.length * blockTimeoutS + 15);
  return physIndexes.map((physIndex): GuestMemoryBlockResponse => {
    const line = out.lines.get(physIndex);
    if (!line) throw missingLine(what, physIndex, out);
    switch (line.status) {
      case 'ok':
      case 'already':
        return { physIndex, response: 'success' };
      case 'not-found':
        return { physIndex, response: 'not-found', message: `memory${physIndex} does not exist in the guest` };
      case 'timeout':
        return {
          physIndex,
          response: 'operation-failed',
          errorCode: 4,
          message: `memory${physIndex} offline did not finish within ${blockTimeoutS} s (the guest kept trying to migrate its pages) and was stopped (EINTR)`,
        };
      default: {
        const errno = errnoFromMessage(line.b);
        return {
          physIndex,
          response: errno?.errno === 'EOPNOTSUPP' ? 'operation-not-supported' : 'operation-failed',
          ...(errno ? { errorCode: errno.errorCode } : {}),
          message: errno ? `memory${physIndex} offline failed with errno ${errno.errorCode} (${errno.errno})` : `memory${physIndex} offline failed: ${line.b || 'no message'}`,
        };
      }
    }
  });
}

/**
 * Up to this many blocks are read file by file (guest-file-open/read/close of `state` and
 * `valid_zones`): six agent round trips a block and no process to start, where one
 * guest-exec costs a process start in the guest and polling for its end (about 20 ms under
 * TCG here, against about 3 ms a file).
 */
export const FILE_READ_MAX_BLOCKS = 2;

function missingFile(e: unknown): boolean {
  return e instanceof DomainError && /No such file or directory/.test(e.message);
}

function zoneOf(physIndex: number, state: string, validZones: string): GuestMemoryBlockZone {
  const online = state.startsWith('online'); // the agent's own test (§7)
  const zones = validZones.split(/\s+/).filter((z) => z !== '');
  return online ? { physIndex, present: true, online, state, zone: zones[0] ?? 'none' } : { physIndex, present: true, online, state, validZones: zones };
}

async function readBlockZonesByFile(qga: QgaChannel, physIndexes: readonly number[]): Promise<GuestMemoryBlockZone[]> {
  const out: GuestMemoryBlockZone[] = [];
  for (const physIndex of physIndexes) {
    const dir = `/sys/devices/system/memory/memory${physIndex}`;
    let state: string;
    try {
      state = (await qga.readFile(`${dir}/state`)).toString('utf8').trim();
    } catch (e) {
      if (!missingFile(e)) throw e;
      out.push({ physIndex, present: false, online: false });
      continue;
    }
    // Gone between the two reads: no zones, as the script's `cat 2>/dev/null` would say.
    const zones = await qga.readFile(`${dir}/valid_zones`).then(
      (b) => b.toString('utf8').trim(),
      (e: unknown) => (missingFile(e) ? '' : Promise.reject(e)),
    );
    out.push(zoneOf(physIndex, state, zones));
  }
  return out;
}

/**
 * `state` and `valid_zones` of blocks, in the order asked: a few file by file, more in one
 * guest-exec (also when the agent refuses file access).
 */
export async function readBlockZones(qga: QgaChannel, physIndexes: readonly number[]): Promise<GuestMemoryBlockZone[]> {
  checkBlockIndexes(physIndexes);
  if (physIndexes.length === 0) return [];
  if (physIndexes.length <= FILE_READ_MAX_BLOCKS) {
    const byFile = await readBlockZonesByFile(qga, physIndexes).catch(() => undefined);
    if (byFile) return byFile;
  }
  const what = 'read memory block zones';
  const out = await runScript(qga, what, ZONES_SCRIPT, physIndexes.map(String));
  return physIndexes.map((physIndex): GuestMemoryBlockZone => {
    const line = out.lines.get(physIndex);
    if (!line) throw missingLine(what, physIndex, out);
    if (line.status !== 'present') return { physIndex, present: false, online: false };
    return zoneOf(physIndex, line.a, line.b);
  });
}

/** Adds a readable `message` to the agent's per-block `guest-set-memory-blocks` answers. */
export function describeAgentResponses(action: 'online' | 'offline', responses: readonly GuestMemoryBlockResponse[]): GuestMemoryBlockResponse[] {
  return responses.map((r) => {
    if (r.response === 'success') return r;
    const name = r.errorCode !== undefined ? errnoName(r.errorCode) : undefined;
    const why =
      r.response === 'not-found'
        ? 'does not exist in the guest'
        : r.response === 'operation-not-supported'
          ? `cannot be ${action === 'online' ? 'onlined' : 'offlined'} (operation not supported)`
          : `${action} failed${r.errorCode !== undefined ? ` with errno ${r.errorCode}${name ? ` (${name})` : ''}` : ''}`;
    return { ...r, message: `memory${r.physIndex} ${why}` };
  });
}
