/**
 * Decides whether a device config can be read by the FUSE reader threads themselves
 * (`FuseLocalReads`, with the extent table of the native READ path): only a read-only
 * stack whose layers are all local files (no upper, no remote or cached blobs, no
 * TurboOCI, no trace recording) — what the threads open is then exactly what the
 * serving device reads.
 */
import { extname } from 'node:path';
import { debuglog } from 'node:util';
import { fileURLToPath } from 'node:url';
import type { FuseLocalReads } from '../fuse/serve-fuse-fd.ts';
import type { DeviceConfig } from '../image/device-config.ts';
import { resolveLowerFile } from '../device/open-device.ts';
import type { ReadDeviceArgs } from './_read-device.ts';
import { extentTableFor } from './_extent-table.ts';

const log = debuglog('obd');

/** URL of the module reader threads load (`_read-device`); give it to `prepareFuseReaders` to bundle it early. */
export const READ_DEVICE_MODULE = new URL(`./_read-device${extname(fileURLToPath(import.meta.url))}`, import.meta.url).href;

/**
 * The local reads of `cfg`, or undefined when its reads must stay on the serving thread:
 * the module reader threads open their own copies with, and (unless `native: false`)
 * the stack's extent table, with which the FUSE server answers READ in native threads.
 */
export async function localReadsFor(cfg: DeviceConfig, options: { native?: boolean } = {}): Promise<FuseLocalReads | undefined> {
  if (cfg.upper !== undefined || cfg.recordTracePath !== '' || cfg.accelerationLayer || cfg.lowers.length === 0) return undefined;
  const lowers: string[] = [];
  for (const lower of cfg.lowers) {
    if (lower.targetFile !== '' || lower.targetDigest !== '') return undefined;
    const file = await resolveLowerFile(lower);
    if (file === undefined) return undefined;
    lowers.push(file);
  }
  const args: ReadDeviceArgs = { lowers };
  const reads: FuseLocalReads = { module: READ_DEVICE_MODULE, exportName: 'openReadDevice', args };
  if (options.native === false) return reads;
  try {
    reads.extents = await extentTableFor(lowers);
  } catch (e) {
    // The reader threads open the layers themselves and report what is wrong.
    log('attach: no native READ path: %s', (e as Error).message);
  }
  return reads;
}
