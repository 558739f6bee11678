/**
 * Opens what a user names as a device: a `config.v1.json` path, or an image (registry
 * reference or `oci:DIR:TAG`) whose device config is derived on the fly. Remote lowers
 * go through `access`; closing the result closes the device, then the access.
 */
import { stat } from 'node:fs/promises';
import { readDeviceConfig, type DeviceConfig } from '../image/device-config.ts';
import { openImageEndpoint } from '../image/image-endpoint.ts';
import { imageDeviceConfig } from '../image/image-device-config.ts';
import type { RemoteAccess } from '../image/remote-access.ts';
import { isOciLayoutRef } from '../image/oci-layout.ts';
import type { LsmtStack } from '../formats/lsmt/stack.ts';
import { openDevice } from './open-device.ts';
import { downloadSettings } from './trace-prefetcher.ts';

export interface OpenedTarget {
  device: LsmtStack;
  config: DeviceConfig;
  close(): Promise<void>;
}

async function isFile(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isFile() === true;
}

/** Reads the device config of `target` (a config file or an image). */
export async function targetDeviceConfig(target: string, options: { access: RemoteAccess; plainHttp?: readonly string[] }): Promise<DeviceConfig> {
  if (!isOciLayoutRef(target) && (target.endsWith('.json') || (await isFile(target)))) return readDeviceConfig(target);
  return imageDeviceConfig(await openImageEndpoint(target, options));
}

export async function openTarget(target: string, options: { access: RemoteAccess; plainHttp?: readonly string[] }): Promise<OpenedTarget> {
  const config = await targetDeviceConfig(target, options);
  const device = await openDevice(config, { remote: options.access.opener(await downloadSettings(config)) });
  return {
    device,
    config,
    async close() {
      await device.close();
    },
  };
}
