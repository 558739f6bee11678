/**
 * The supervised form of {@link attachDevice}: the device is served by a child process
 * under a supervisor (this process) that owns the FUSE connection, so the loop device
 * and everything mounted on it survive the death of the serving process (see
 * `fuse-supervisor.ts`). This process never opens the device: the child does, from
 * `device` (a device config for obd).
 */
import { superviseFuse } from './fuse-supervisor.ts';
import type { PreparedServer, ServerCommand } from './fuse-supervisor.ts';
import type { Attachment } from './attach-device.ts';
import { loopOverFuse } from './_loop-over-fuse.ts';

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
  /** A serving child started ahead of need (see `PreparedServer`); taken over in any case. */
  prepared?: PreparedServer;
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
  const { served, blockDevice, detach } = await loopOverFuse(
    options.runDir ?? '/run/obd',
    (mountpoint) =>
      superviseFuse({
        mountpoint,
        server: options.server,
        device: options.device,
        ...(options.workers !== undefined ? { workers: options.workers } : {}),
        ...(options.spare !== undefined ? { spare: options.spare } : {}),
        ...(options.onServer !== undefined ? { onServer: options.onServer } : {}),
        ...(options.prepared !== undefined ? { prepared: options.prepared } : {}),
      }),
    (f) => f.readOnly,
  );
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
    detach,
  };
}
