/**
 * Gives a device config a writable layer in `dir` (`writable_data`, `writable_index`,
 * the snapshotter's names), creating it on first use with virtual size 0 so it takes
 * the size of the lowers when stacked (lsmt.md §11).
 */
import { access, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { DeviceConfig } from '../image/device-config.ts';
import { createWritableLayer } from '../formats/lsmt/writable-layer.ts';

export async function withWritableUpper(cfg: DeviceConfig, dir: string, options: { sparse?: boolean } = {}): Promise<DeviceConfig> {
  const data = join(dir, 'writable_data');
  const index = join(dir, 'writable_index');
  const exists = await access(data).then(
    () => true,
    () => false,
  );
  if (!exists) {
    await mkdir(dir, { recursive: true });
    const layer = await createWritableLayer({ data, index, virtualSize: 0, ...(options.sparse === true ? { sparse: true } : {}) });
    await layer.close();
  }
  return { ...cfg, upper: { data, index, target: '', gzipIndex: '' } };
}
