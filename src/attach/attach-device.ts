/**
 * Wires a block device to the kernel without nbd/ublk/TCMU: our FUSE server exposes
 * it as one file, `losetup --direct-io=on` turns that into /dev/loopN. Detach tears
 * down in the order the kernel needs: loop first, then the FUSE mount (it is busy
 * while the loop holds it), then the directory.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlockDevice } from '../io/block-device.ts';
import { serveFuse, type FuseMount } from '../fuse/serve-fuse.ts';
import { attachLoop, detachLoop } from './loop-device.ts';

export interface Attachment {
  /** `/dev/loopN`. */
  readonly blockDevice: string;
  /** The FUSE file behind the loop device. */
  readonly file: string;
  /** Resolves when the FUSE server stops for any reason. */
  readonly closed: Promise<void>;
  detach(): Promise<void>;
}

export interface AttachOptions {
  /** Where the FUSE mount directory is created; default /run/obd. */
  runDir?: string;
  workers?: number;
}

export async function attachDevice(device: BlockDevice, options: AttachOptions = {}): Promise<Attachment> {
  const runDir = options.runDir ?? '/run/obd';
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const mountpoint = await mkdtemp(join(runDir, 'fuse-'));
  let fuse: FuseMount | undefined;
  let loop: string | undefined;
  try {
    fuse = await serveFuse(device, { mountpoint, ...(options.workers !== undefined ? { workers: options.workers } : {}) });
    loop = await attachLoop(fuse.path, { readOnly: device.readOnly });
  } catch (e) {
    await fuse?.unmount().catch(() => {});
    await rm(mountpoint, { recursive: true, force: true }).catch(() => {});
    throw e;
  }
  const blockDevice = loop;
  const served = fuse;
  let detached: Promise<void> | undefined;
  return {
    blockDevice,
    file: served.path,
    closed: served.closed,
    detach() {
      detached ??= (async () => {
        try {
          await detachLoop(blockDevice);
        } finally {
          await served.unmount();
          await rm(mountpoint, { recursive: true, force: true }).catch(() => {});
        }
      })();
      return detached;
    },
  };
}
