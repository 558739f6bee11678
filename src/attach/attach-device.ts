/**
 * Wires a block device to the kernel without nbd/ublk/TCMU: our FUSE server exposes
 * it as one file, `losetup --direct-io=on` turns that into /dev/loopN. Detach tears
 * down in the order the kernel needs: loop first, then the FUSE mount (it is busy
 * while the loop holds it), then the directory.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlockDevice } from '../io/block-device.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import { serveFuse } from '../fuse/serve-fuse.ts';
import type { FuseLocalReads } from '../fuse/serve-fuse-fd.ts';
import { createNbdServer } from '../nbd/nbd-server.ts';
import { attachLoop, detachLoop } from './loop-device.ts';
import { loopOverFuse } from './_loop-over-fuse.ts';
import { runCommand } from './run-command.ts';

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
  /**
   * `fuse` (default): our FUSE server. `nbd`: our NBD server on a unix socket, turned
   * into a file by libnbd's `nbdfuse` (the path for hosts without our FUSE server).
   */
  frontend?: 'fuse' | 'nbd';
  /** FUSE, read-only devices: reader threads serve reads from their own copies (`localReadsFor`). */
  localReads?: FuseLocalReads;
}

export async function attachDevice(device: BlockDevice, options: AttachOptions = {}): Promise<Attachment> {
  if (options.frontend === 'nbd') return attachThroughNbd(device, options);
  const { served, blockDevice, detach } = await loopOverFuse(
    options.runDir ?? '/run/obd',
    (mountpoint) =>
      serveFuse(device, {
        mountpoint,
        ...(options.workers !== undefined ? { workers: options.workers } : {}),
        ...(options.localReads !== undefined ? { localReads: options.localReads } : {}),
      }),
    () => device.readOnly,
  );
  return {
    blockDevice,
    file: served.path,
    closed: served.closed,
    detach,
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** NBD server (unix socket) → nbdfuse → loop. */
async function attachThroughNbd(device: BlockDevice, options: AttachOptions): Promise<Attachment> {
  const runDir = options.runDir ?? '/run/obd';
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const work = await mkdtemp(join(runDir, 'nbd-'));
  const fuseDir = join(work, 'fuse');
  await mkdir(fuseDir);
  const socket = join(work, 'nbd.sock');
  const server = createNbdServer({ device, name: 'obd' });
  await server.listen({ path: socket });
  const pidfile = join(work, 'nbdfuse.pid');
  const child = spawn('nbdfuse', ['-P', pidfile, join(fuseDir, 'disk'), '--unix', socket], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('error', () => {});
  const teardown = async (loop?: string): Promise<void> => {
    if (loop !== undefined) await detachLoop(loop);
    await runCommand(['fusermount3', '-u', fuseDir], { what: `unmount ${fuseDir}` }).catch(() => runCommand(['umount', '-l', fuseDir]).catch(() => {}));
    if (!(await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]))) child.kill('SIGKILL');
    await exited;
    await server.close();
    await rm(work, { recursive: true, force: true }).catch(() => {});
  };
  let loop: string | undefined;
  try {
    for (let i = 0; i < 200 && !existsSync(pidfile) && child.exitCode === null; i++) await sleep(50);
    if (!existsSync(pidfile)) throw new FailedPreconditionError(`Cannot attach through NBD: nbdfuse did not start: ${stderr.trim()}`);
    loop = await attachLoop(join(fuseDir, 'disk'), { readOnly: device.readOnly });
  } catch (e) {
    await teardown().catch(() => {});
    throw e;
  }
  const blockDevice = loop;
  let detached: Promise<void> | undefined;
  return {
    blockDevice,
    file: join(fuseDir, 'disk'),
    closed: exited,
    detach() {
      detached ??= teardown(blockDevice);
      return detached;
    },
  };
}
