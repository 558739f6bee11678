/**
 * The common half of both FUSE attaches (in-process `attachDevice`, supervised
 * `attachSupervised`): a private mountpoint under the run directory, the FUSE file served
 * there by `serve`, a loop device over that file, and the teardown in the right order
 * (loop, FUSE, mountpoint) — also when attaching fails half-way.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { attachLoop, detachLoop } from './loop-device.ts';

/** What a FUSE frontend gives back: the served file and how to unmount it. */
export interface ServedFuseFile {
  readonly path: string;
  unmount(): Promise<void>;
}

/** A loop device over a served FUSE file. */
export interface LoopOverFuse<T extends ServedFuseFile> {
  served: T;
  blockDevice: string;
  /** Detaches the loop device, unmounts FUSE, removes the mountpoint; idempotent. */
  detach(): Promise<void>;
}

/** Serves a FUSE file with `serve(mountpoint)` and attaches a loop device over it. */
export async function loopOverFuse<T extends ServedFuseFile>(
  runDir: string,
  serve: (mountpoint: string) => Promise<T>,
  readOnly: (served: T) => boolean,
): Promise<LoopOverFuse<T>> {
  await mkdir(runDir, { recursive: true, mode: 0o700 });
  const mountpoint = await mkdtemp(join(runDir, 'fuse-'));
  let served: T | undefined;
  let blockDevice: string;
  try {
    served = await serve(mountpoint);
    blockDevice = await attachLoop(served.path, { readOnly: readOnly(served) });
  } catch (e) {
    await served?.unmount().catch(() => {});
    await rm(mountpoint, { recursive: true, force: true }).catch(() => {});
    throw e;
  }
  const file = served;
  let detached: Promise<void> | undefined;
  return {
    served: file,
    blockDevice,
    detach() {
      detached ??= (async () => {
        try {
          await detachLoop(blockDevice);
        } finally {
          await file.unmount();
          await rm(mountpoint, { recursive: true, force: true }).catch(() => {});
        }
      })();
      return detached;
    },
  };
}
