/**
 * The snapshotter's `DeviceMounter` over `obd attach` sessions: each device is served
 * by its own detached attach process (FUSE + loop + mount), found again by mount point
 * or config path through the session records, so devices outlive a snapshotter restart.
 *
 * With `standby` (default true) one attach process is kept started ahead of need
 * ({@link StandbyAttach}: node up, modules loaded), so an attach on a container's start
 * path does not wait for a process start (bench/cold-start: ~0.3 s of a cold start). The
 * next standby starts a few seconds after the attach that used one, off its start path;
 * `close()` ends an unused one (it also ends by itself when its starter exits).
 */
import type { DeviceMounter, DeviceMountOptions } from '../snapshotter/device-mounter.ts';
import { findSession, stopSession, DEFAULT_RUN_DIR } from '../attach/session.ts';
import { isMountPoint } from '../attach/filesystem.ts';
import { NotFoundError } from '../io/errors.ts';
import { memoryIo } from './io.ts';
import { attachCommand, StandbyAttach } from './commands/attach.ts';

/** Delay before the next standby process starts after one was used: not while the device that used it starts. */
const STANDBY_RESTOCK_MS = 5000;

function fsTypeArg(o: Pick<DeviceMountOptions, 'fstype' | 'mountOptions' | 'mkfsOptions'>): string {
  return `${o.fstype};${o.mountOptions.join(',')};${o.mkfsOptions.join(' ')}`;
}

export function sessionDeviceMounter(options: { runDir?: string; standby?: boolean } = {}): DeviceMounter {
  const runDir = options.runDir ?? DEFAULT_RUN_DIR;
  const useStandby = options.standby ?? true;
  let standby: StandbyAttach | undefined = useStandby ? StandbyAttach.start() : undefined;
  let closed = false;
  let restocking: NodeJS.Timeout | undefined;
  const restock = (): void => {
    if (!useStandby || closed || standby !== undefined || restocking !== undefined) return;
    restocking = setTimeout(() => {
      restocking = undefined;
      if (!closed) standby ??= StandbyAttach.start();
    }, STANDBY_RESTOCK_MS);
    restocking.unref();
  };
  const attach = async (args: string[]): Promise<string> => {
    const io = memoryIo();
    const ready = standby?.usable === true ? standby : undefined;
    standby = undefined;
    try {
      if (ready !== undefined) await ready.run([...args, '--run-dir', runDir], io);
      else await attachCommand.run([...args, '--background', '--run-dir', runDir], io);
    } finally {
      restock();
    }
    return io.stdout;
  };
  const stop = async (key: string): Promise<void> => {
    try {
      await stopSession(await findSession(key, runDir));
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
    }
  };
  return {
    async mount(configPath, mountpoint, o) {
      await attach([configPath, '--mount', mountpoint, '--fstype', fsTypeArg(o), ...(o.writable ? ['--rw'] : []), ...(o.mkfs ? ['--mkfs'] : [])]);
    },
    unmount: (mountpoint) => stop(mountpoint),
    isMounted: (mountpoint) => isMountPoint(mountpoint),
    async attach(configPath, o) {
      const out = await attach([configPath, ...(o.writable ? ['--rw'] : [])]);
      return out.split(' ')[0]?.trim() ?? '';
    },
    detach: (configPath) => stop(configPath),
    async close() {
      closed = true;
      clearTimeout(restocking);
      standby?.close();
      standby = undefined;
    },
  };
}
