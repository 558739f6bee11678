/**
 * Decides whether a device config can be read by the FUSE reader threads themselves
 * (`FuseLocalReads`): only a read-only stack whose layers are all local files (no upper,
 * no remote or cached blobs, no TurboOCI, no trace recording) — what the threads open is
 * then exactly what the serving device reads.
 */
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FuseLocalReads } from '../fuse/serve-fuse-fd.ts';
import type { DeviceConfig } from '../image/device-config.ts';
import { resolveLowerFile } from '../device/open-device.ts';
import type { ReadDeviceArgs } from './_read-device.ts';

/** URL of the module reader threads load (`_read-device`); give it to `prepareFuseReaders` to bundle it early. */
export const READ_DEVICE_MODULE = new URL(`./_read-device${extname(fileURLToPath(import.meta.url))}`, import.meta.url).href;

/** The local-reads module for `cfg`, or undefined when its reads must stay on the serving thread. */
export async function localReadsFor(cfg: DeviceConfig): Promise<FuseLocalReads | undefined> {
  if (cfg.upper !== undefined || cfg.recordTracePath !== '' || cfg.lowers.length === 0) return undefined;
  const lowers: string[] = [];
  for (const lower of cfg.lowers) {
    if (lower.targetFile !== '' || lower.targetDigest !== '') return undefined;
    const file = await resolveLowerFile(lower);
    if (file === undefined) return undefined;
    lowers.push(file);
  }
  const args: ReadDeviceArgs = { lowers };
  return { module: READ_DEVICE_MODULE, exportName: 'openReadDevice', args };
}
