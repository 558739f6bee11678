/**
 * The supervised form of {@link attachDevice}: the device is served by a child process
 * under a supervisor (this process) that owns the FUSE connection, so the loop device
 * and everything mounted on it survive the death of the serving process (see
 * `fuse-supervisor.ts`). This process never opens the device: the child does, from
 * `device` (a device config for obd).
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { superviseFuse } from './fuse-supervisor.ts';
import type { ServerCommand, SupervisedFuse } from './fuse-supervisor.ts';
import type { Attachment } from './attach-device.ts';
import { attachLoop, detachLoop } from './loop-device.ts';

/** Options of {@link attachSupervised}. */
export interface AttachSupervisedOptions {
  /** How to start a serving child (`obd serve-fuse …`). */
  server: ServerCommand;
  /** What the child opens (a device config). */
  device: unknown;
  /** Where the FUSE mount directory is created; default /run/obd. */
  runDir?: string;
  workers?: number;
  /** Keep a loaded spare serving process. Default true. */
  spare?: boolean;
  /** Called whenever a serving process starts serving. */
  onServer?: (info: { pid: number; restarts: number }) => void;
}

/** An attachment whose server is a supervised child process. */
export interface SupervisedAttachment extends Attachment {
  readonly size: number;
  readonly readOnly: boolean;
  /** pid of the serving child (-1 while it is being restarted). */
  readonly serverPid: number;
  readonly restarts: number;
}

/** Supervised FUSE → `losetup --direct-io=on`; on failure nothing stays attached. */
export async function attachSupervised(options: AttachSupervisedOptions): Promise<SupervisedAttachment> {
  const runDir = options.runDir ?? '/run/obd';
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const mountpoint = await mkdtemp(join(runDir, 'fuse-'));
  let fuse: SupervisedFuse | undefined;
  let loop: string | undefined;
  try {
    fuse = await superviseFuse({
      mountpoint,
      server: options.server,
      device: options.device,
      ...(options.workers !== undefined ? { workers: options.workers } : {}),
      ...(options.spare !== undefined ? { spare: options.spare } : {}),
      ...(options.onServer !== undefined ? { onServer: options.onServer } : {}),
    });
    loop = await attachLoop(fuse.path, { readOnly: fuse.readOnly });
  } catch (e) {
    await fuse?.unmount().catch(() => {});
    await rm(mountpoint, { recursive: true, force: true }).catch(() => {});
    throw e;
  }
  const served = fuse;
  const blockDevice = loop;
  let detached: Promise<void> | undefined;
  return {
    blockDevice,
    file: served.path,
    closed: served.closed,
    size: served.size,
    readOnly: served.readOnly,
    get serverPid() {
      return served.serverPid;
    },
    get restarts() {
      return served.restarts;
    },
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
