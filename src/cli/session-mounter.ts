/**
 * The snapshotter's `DeviceMounter` over `obd attach` sessions: each device is served
 * by its own detached attach process (FUSE + loop + mount), found again by mount point
 * or config path through the session records, so devices outlive a snapshotter restart.
 */
import type { DeviceMounter, DeviceMountOptions } from '../snapshotter/device-mounter.ts';
import { findSession, stopSession, DEFAULT_RUN_DIR } from '../attach/session.ts';
import { isMountPoint } from '../attach/filesystem.ts';
import { NotFoundError } from '../io/errors.ts';
import { memoryIo } from './io.ts';
import { attachCommand } from './commands/attach.ts';

function fsTypeArg(o: Pick<DeviceMountOptions, 'fstype' | 'mountOptions' | 'mkfsOptions'>): string {
  return `${o.fstype};${o.mountOptions.join(',')};${o.mkfsOptions.join(' ')}`;
}

export function sessionDeviceMounter(options: { runDir?: string } = {}): DeviceMounter {
  const runDir = options.runDir ?? DEFAULT_RUN_DIR;
  const attach = async (args: string[]): Promise<string> => {
    const io = memoryIo();
    await attachCommand.run([...args, '--background', '--run-dir', runDir], io);
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
  };
}
