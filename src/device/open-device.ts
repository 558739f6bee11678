/**
 * Opens a device config (runtime.md §2) into an `LsmtStack`: every lower resolved to a
 * local file (`file`, then `dir/overlaybd.commit`, `dir/.commit`, `dir/overlaybd.sealed`),
 * unwrapped (tar → ZFile → LSMT) and opened concurrently; the upper opened as a writable
 * layer stacked on top. Whatever was opened is closed again when any step fails.
 *
 * Trace prefetch (runtime.md §8): with `recordTracePath` or `accelerationLayer` a
 * {@link TracePrefetcher} wraps every lower's decoded reader; replay starts once the
 * stack is built, recording ends when the device closes (or its lock file is removed).
 */
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobReader } from '../io/blob-reader.ts';
import { openFileReader } from '../io/file-reader.ts';
import { InvalidArgumentError, UnsupportedError } from '../io/errors.ts';
import { openLayerBlob } from '../formats/open-layer-blob.ts';
import { openRoLayer } from '../formats/lsmt/ro-layer.ts';
import type { ReadOnlyLayer, WritableLayer } from '../formats/lsmt/layer.ts';
import { openWritableLayer } from '../formats/lsmt/writable-layer.ts';
import { LsmtStack } from '../formats/lsmt/stack.ts';
import type { DeviceConfig, LowerConfig } from '../image/device-config.ts';
import { TracePrefetcher, type TracePrefetcherOptions } from './trace-prefetcher.ts';

/** Opens the remote blob of a lower; supplied by the registry layer when present. */
export type RemoteOpener = (lower: LowerConfig, index: number, repoBlobUrl: string) => Promise<BlobReader>;

export interface OpenDeviceOptions {
  remote?: RemoteOpener;
  /** Wraps each lower's raw blob reader (instrumentation: counting, tracing). */
  wrapBlob?: (reader: BlobReader, index: number) => BlobReader;
  /** Trace replay settings (`prefetchConfig` of the service config). */
  prefetch?: TracePrefetcherOptions;
  /** Called with the trace prefetcher once the device is built and record/replay started. */
  onPrefetch?: (prefetcher: TracePrefetcher) => void;
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** The local file of a lower, in upstream's order of preference, or undefined. */
export async function resolveLowerFile(lower: LowerConfig): Promise<string | undefined> {
  const candidates = [lower.file];
  if (lower.dir !== '') {
    candidates.push(join(lower.dir, 'overlaybd.commit'), join(lower.dir, '.commit'), join(lower.dir, 'overlaybd.sealed'));
  }
  for (const c of candidates) if (c !== '' && (await exists(c))) return c;
  return undefined;
}

async function openLower(cfg: DeviceConfig, i: number, options: OpenDeviceOptions & { prefetcher?: TracePrefetcher | undefined }): Promise<ReadOnlyLayer> {
  const lower = cfg.lowers[i] as LowerConfig;
  if (lower.targetFile !== '' || lower.targetDigest !== '') {
    throw new UnsupportedError(`Cannot open layer ${i}: TurboOCI layers are not supported yet`);
  }
  const file = await resolveLowerFile(lower);
  let raw: BlobReader;
  if (file !== undefined) {
    raw = await openFileReader(file);
  } else if (lower.digest !== '') {
    if (cfg.repoBlobUrl === '') throw new InvalidArgumentError(`Cannot open layer ${i}: empty repoBlobUrl`);
    if (options.remote === undefined) {
      throw new UnsupportedError(`Cannot open layer ${i}: remote layers need the registry client`);
    }
    raw = await options.remote(lower, i, cfg.repoBlobUrl);
  } else {
    throw new InvalidArgumentError(
      `Cannot open layer ${i}: no local file (${lower.file === '' ? 'file not set' : lower.file}) and no digest`,
    );
  }
  if (options.wrapBlob !== undefined) raw = options.wrapBlob(raw, i);
  try {
    const { reader } = await openLayerBlob(raw);
    const decoded = options.prefetcher?.wrap(reader, i) ?? reader;
    return await openRoLayer(decoded, { what: `layer ${i} (${file ?? lower.digest})` });
  } catch (e) {
    await raw.close().catch(() => {});
    throw e;
  }
}

async function closeAll(items: ReadonlyArray<{ close(): Promise<void> } | undefined>): Promise<void> {
  await Promise.all(items.map((x) => x?.close().catch(() => {})));
}

/** Opens the layers of `cfg` and stacks them. */
export async function openDevice(config: DeviceConfig, options: OpenDeviceOptions = {}): Promise<LsmtStack> {
  const prefetcher = await TracePrefetcher.forConfig(config, options.prefetch);
  const cfg = { ...config, lowers: TracePrefetcher.dataLowers(config) };
  const results = await Promise.allSettled(cfg.lowers.map((_, i) => openLower(cfg, i, { ...options, prefetcher })));
  const lowers = results.map((r) => (r.status === 'fulfilled' ? r.value : undefined));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed !== undefined) {
    await prefetcher?.abort();
    await closeAll(lowers);
    throw failed.reason;
  }
  let upper: WritableLayer | undefined;
  let stack: LsmtStack;
  try {
    if (cfg.upper !== undefined) upper = await openWritableLayer({ data: cfg.upper.data, index: cfg.upper.index, rwTag: cfg.lowers.length });
    stack = await LsmtStack.create({ lowers: lowers as ReadOnlyLayer[], ...(upper ? { upper } : {}) });
  } catch (e) {
    await prefetcher?.abort();
    await closeAll([...lowers, upper]);
    throw e;
  }
  if (prefetcher !== undefined) {
    prefetcher.start();
    options.onPrefetch?.(prefetcher);
  }
  return stack;
}
