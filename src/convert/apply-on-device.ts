/**
 * `obd apply` (upstream `overlaybd-apply`): one layer applied onto the file system of a
 * device given by its config (which needs an upper): the device is opened, attached
 * through FUSE + loop, its file system mounted read-write on `mountpoint` (`mkfs` first
 * when asked), the layer applied, then everything torn down again — also when the apply
 * fails. The convertor builds its layers on a plain disk image instead
 * (`raw-image-builder.ts`).
 *
 * @example
 * ```ts
 * const stats = await applyOnDevice(createReadStream('layer.tar.gz'), {
 *   cfg, mountpoint: 'work/mnt', mkfs: false, runDir: '/run/obd', applier: new SubprocessApplier(),
 * });
 * ```
 */
import { mkdir } from 'node:fs/promises';
import type { DeviceConfig } from '../image/device-config.ts';
import { openDevice } from '../device/open-device.ts';
import { startSession } from '../attach/session.ts';
import type { ApplyOptions, ApplyStats, LayerApplier } from './layer-applier.ts';

export interface ApplyOnDeviceOptions {
  cfg: DeviceConfig;
  mountpoint: string;
  mkfs: boolean;
  fsType?: string;
  runDir: string;
  applier: LayerApplier;
  applyOptions?: ApplyOptions;
}

/** Applies `layer` onto the file system of the device of `options.cfg` (see the module comment). */
export async function applyOnDevice(layer: AsyncIterable<Uint8Array>, options: ApplyOnDeviceOptions): Promise<ApplyStats> {
  // The applier gets ready (its process starts) while the device is attached and mkfs runs.
  options.applier.prepare?.();
  const device = await openDevice(options.cfg);
  try {
    await mkdir(options.mountpoint, { recursive: true });
    const session = await startSession(device, {
      target: `apply:${options.mountpoint}`,
      runDir: options.runDir,
      mountpoint: options.mountpoint,
      writable: true,
      mkfs: options.mkfs,
      ...(options.fsType !== undefined ? { fsType: options.fsType } : {}),
    });
    let stats: ApplyStats;
    try {
      stats = await options.applier.apply(layer, options.mountpoint, { maxFileSize: device.size, ...options.applyOptions });
    } finally {
      await session.stop();
    }
    await device.flush();
    return stats;
  } finally {
    await device.close();
  }
}
