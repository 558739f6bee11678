/**
 * Heap settings for the commands that move a lot of data through memory, applied by
 * restarting the process once (execve: same PID, same descriptors, same arguments).
 *
 * Why: on virtual machines whose memory the host backs on first use (the Firecracker
 * guests this project is built and measured on), the first touch of an anonymous 4 KiB
 * page costs ~16 µs: 4 ms per fresh MiB, more than compressing or hashing it. glibc's
 * `glibc.malloc.hugetlb=1` makes malloc advise transparent huge pages for the heap it
 * grows (one fault per 2 MiB where the kernel allows THP), and a 32 MiB mmap threshold
 * keeps the buffers of a few MiB in that heap instead of a fresh mapping each. Measured
 * here: allocating and touching 64 MiB in 1 MiB buffers 263 ms → 13 ms; `obd convert`
 * of bench/convert's image 5.0-5.5 s → 4.0-4.8 s (minor faults 69k → 33k).
 *
 * glibc reads tunables only when a process starts, hence the restart; it costs one Node
 * start-up (~0.1 s), so only the long-running and heavy commands take it (the snapshotter
 * daemon's children, the FUSE servers, inherit the setting). `OBD_MALLOC_TUNING=off`, or
 * a `glibc.malloc.hugetlb` setting of the caller's own, leaves the process as it is.
 */
import { native } from '../native/index.ts';

export const MALLOC_TUNABLES = 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=33554432';

/** The commands worth a restart. */
const HEAVY_COMMANDS = new Set(['convert', 'apply', 'snapshotter']);

/**
 * The environment to restart `command` with, or undefined when it runs as it is (a light
 * command, tuning off or already applied, not Linux).
 */
export function tunedEnvironment(command: string | undefined, env: NodeJS.ProcessEnv, platform: string = process.platform): NodeJS.ProcessEnv | undefined {
  if (platform !== 'linux' || command === undefined || !HEAVY_COMMANDS.has(command)) return undefined;
  if (env['OBD_MALLOC_TUNING'] === 'off') return undefined;
  const current = env['GLIBC_TUNABLES'] ?? '';
  if (current.includes('glibc.malloc.hugetlb')) return undefined;
  return { ...env, GLIBC_TUNABLES: current === '' ? MALLOC_TUNABLES : `${current}:${MALLOC_TUNABLES}` };
}

/**
 * Restarts this process with {@link tunedEnvironment} when it applies. Returns only when
 * no restart is wanted or the execve failed (the command then runs untuned).
 */
export function restartTuned(): void {
  const env = tunedEnvironment(process.argv[2], process.env);
  if (env === undefined) return;
  const strings = Object.entries(env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
  native.execve(process.execPath, [process.execPath, ...process.execArgv, ...process.argv.slice(1)], strings);
}
