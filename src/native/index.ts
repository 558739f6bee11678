/**
 * Loader and typed surface of the in-repo N-API binding (`native/obd-native.c`), which
 * links Debian's liblz4 and libzstd — the same encoders upstream overlaybd uses, so
 * compressed blocks are byte-identical — and computes raw CRC-32C with SSE4.2.
 *
 * Why not npm packages: lz4-napi's output differs from `LZ4_compress_default` and is
 * 2x slower; zstd-napi compiles at install anyway (platform notes). A 300-line C file
 * over the system libraries is smaller than either dependency.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';

export interface NativeBinding {
  /** Raw CRC-32C register update (no inversion) of `data` starting from `seed`. */
  crc32c(data: Uint8Array, seed: number): number;
  lz4Compress(src: Uint8Array, dst: Uint8Array): number;
  lz4Decompress(src: Uint8Array, dst: Uint8Array): number;
  zstdCompress(src: Uint8Array, dst: Uint8Array, level: number): number;
  zstdDecompress(src: Uint8Array, dst: Uint8Array): number;
  /**
   * Verifies (optionally) and decodes `count` stored ZFile blocks packed in `src` into
   * `dst` at multiples of `blockSize`. Returns decoded bytes, `-(i+1)` for a CRC failure
   * of block i, `-(2^20)-(i+1)` for a decode failure of block i.
   */
  decodeBlocks(
    src: Uint8Array,
    lengths: Uint32Array,
    count: number,
    dst: Uint8Array,
    blockSize: number,
    algo: number,
    verify: number,
  ): number;
  /** Compresses one block as upstream does and appends the block CRC when `verify`. */
  encodeBlock(src: Uint8Array, dst: Uint8Array, algo: number, verify: number): number;
  /**
   * Encodes `src` as blocks of `blockSize` (the last may be shorter), each as
   * {@link encodeBlock} does, on a libuv pool thread: stored blocks packed into `dst`
   * (room `slot` per block), their lengths into `lengths`. Resolves with the packed
   * bytes, or `-(i+1)` when block i failed. The buffers must stay untouched until then.
   */
  encodeBlocks(src: Uint8Array, blockSize: number, dst: Uint8Array, slot: number, lengths: Uint32Array, algo: number, verify: number): Promise<number>;
  /**
   * Compares two files block by block (4 KiB) over `ranges` (`[start, end)` pairs,
   * sorted, block-aligned starts) on two pool threads; resolves with the ranges that
   * differ as pairs, adjacent ones merged. With `update`, differing blocks are copied
   * from the first file into the second. Rejects naming a failed read or write.
   */
  diffRanges(diskFd: number, shadowFd: number, ranges: Float64Array, update: number): Promise<Float64Array>;
  /** Replaces this process image (execve(2)); returns `-errno` only when that fails. */
  execve(path: string, argv: string[], envp: string[]): number;
  /** mount(2) on a pool thread: 0 or -errno (see `mount.ts` for the options). */
  mount(source: string, target: string, fstype: string, flags: number, data: string): Promise<number>;
  /** Attaches a free loop device to `file` (LOOP_CONFIGURE) on a pool thread: its number, or -errno. */
  loopAttach(file: string, readOnly: boolean, directIo: boolean): Promise<number>;
  isAllZero(buf: Uint8Array): boolean;
  /** lseek(SEEK_DATA): next data offset ≥ `offset`, -1 when none (ENXIO), < -1000 on error. */
  seekData(fd: number, offset: number): number;
  /** lseek(SEEK_HOLE): next hole offset ≥ `offset`, -1 for ENXIO, < -1000 on error. */
  seekHole(fd: number, offset: number): number;
  /** fallocate(PUNCH_HOLE|KEEP_SIZE): 0, or -errno. */
  punchHole(fd: number, offset: number, length: number): number;
  /**
   * Starts the native FUSE READ path (see `native/obd-native.c`, "FUSE READ fast path"):
   * `params` = [fd, threads, device size, max io]; `extents` = 5 numbers per extent
   * [offset, length, moffset (sectors), zeroed, source]; `sources` = 7 per source
   * [fd (duplicated), base, algo 0 plain/1 lz4/2 zstd, block size, verify, decoded size,
   * block count]; `starts` = per ZFile source, block count + 1 offsets from its base.
   * `onEvent(0, request)` for each request JavaScript must answer, `onEvent(1, reason)`
   * once when the last thread exits (0 unmounted, 1 stopped, 2 failed), `onEvent(2, text)`
   * for a log line. Throws RangeError on malformed tables.
   */
  fuseServeStart(
    params: Float64Array,
    extents: Float64Array,
    sources: Float64Array,
    starts: Float64Array,
    onEvent: (kind: number, arg: Uint8Array | number | string) => void,
  ): NativeFuseHandle;
  /** Threads waiting for the mount leave; the others leave on ENODEV. */
  fuseServeStop(handle: NativeFuseHandle): void;
  /** [READs answered natively, requests handed to JavaScript]. */
  fuseServeStats(handle: NativeFuseHandle): [number, number];
  readonly hardwareCrc: boolean;
}

/** Opaque handle of a native FUSE READ path ({@link NativeBinding.fuseServeStart}). */
export interface NativeFuseHandle {
  readonly __nativeFuseHandle: never;
}

export const DECODE_FAIL_BASE = 1 << 20;

function load(): NativeBinding {
  const require = createRequire(import.meta.url);
  // From src/native (tsx) or dist/src/native (compiled), walk up to the package root.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'build', 'Release', 'obd_native.node');
    if (existsSync(candidate)) return require(candidate) as NativeBinding;
    dir = dirname(dir);
  }
  throw new Error(
    'Cannot load the native binding build/Release/obd_native.node: run `npm ci` (needs liblz4-dev, libzstd-dev)',
  );
}

export const native: NativeBinding = load();

/** Raw CRC-32C (zfile.md §4.0): `crc32c(data, 0)` of "123456789" is 0x58E3FA20. */
export function crc32c(data: Uint8Array, seed = 0): number {
  return native.crc32c(data, seed >>> 0);
}
