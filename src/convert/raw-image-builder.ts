/**
 * Builds the overlaybd layers of one image on a plain disk image (convertor.md §A.6,
 * "Build layer i", by another route to the same layers).
 *
 * Upstream applies each layer onto a fresh writable layer stacked on the layers built
 * so far, attached as a block device, so every write of the file system lands in the
 * new layer. Here the file system lives on one sparse raw file for the whole image
 * (`disk.img`, on a buffered loop device — the kernel's own fast path, the same as a
 * `tar -x` onto an ext4 image), and a layer is what the apply changed:
 *
 * 1. `open`: the disk starts as the merged content of the given lowers (base layer,
 *    layers reused from the conversion cache) or empty, then `mkfs` when asked;
 *    `shadow.img` holds a copy of it;
 * 2. `build(layer)`: mount (read-write), apply, remount read-only (the file system is
 *    clean and every write is in `disk.img`); then every 4 KiB block that differs
 *    between disk and shadow — within the union of both files' data extents
 *    (SEEK_DATA); everything else reads zeros on both — is copied into the shadow and
 *    becomes an index entry of the layer (a block that became zeros is stored as zeros:
 *    it must mask the layers below);
 * 3. those blocks are committed from the shadow (tar-wrapped ZFile with the chain-ID
 *    UUIDs) in the background while the next layer is applied; the next layer's diff
 *    waits for that commit (it changes the shadow). The last layer (`last`) skips the
 *    shadow: its changed blocks are committed straight from the disk.
 *
 * The merged view of the committed layers is the disk after each apply, block for
 * block, so the layers mount exactly as upstream's do. They never hold more blocks than
 * upstream's writable layer would record (a block written again with its old content
 * is not stored), and no temporary writable layer is written or read back.
 *
 * @example
 * ```ts
 * const builder = await RawImageBuilder.open({ dir: 'work/disk', lowers: [], virtualSize: 64 * 2 ** 30, mkfs: true, applier });
 * try {
 *   const { stats, committed } = await builder.build(stream, { dir: 'work/0000', uuid, zfile: { algorithm: 'lz4', blockSize: 4096 } });
 *   const file = await committed; // work/0000/overlaybd.commit
 * } finally {
 *   await builder.close();
 * }
 * ```
 */
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { openFileReader, type FileReader } from '../io/file-reader.ts';
import { commitLayer, type CommitHeader } from '../formats/lsmt/commit.ts';
import { MAX_SEGMENT_LENGTH, SECTOR, type Segment } from '../formats/lsmt/segment.ts';
import { seekDataExtents, type Extent } from '../formats/lsmt/sparse-layer.ts';
import { writeLayerFile } from '../formats/layer-files.ts';
import type { LowerConfig } from '../image/device-config.ts';
import { openDevice } from '../device/open-device.ts';
import { exportRaw } from '../device/export-raw.ts';
import { attachLoop, detachLoop } from '../attach/loop-device.ts';
import { isMountPoint, mkfs, mountFs, parseFsSpec, remountFs, umountFs, type FsSpec } from '../attach/filesystem.ts';
import { DataCorruptionError, FailedPreconditionError } from '../io/errors.ts';
import { native } from '../native/index.ts';
import type { ApplyOptions, ApplyStats, LayerApplier } from './layer-applier.ts';

/** Comparison granularity: a file-system block. */
const BLOCK = 4096;
/** Bytes copied per read. */
const CHUNK = 4 << 20;
/** Longest index entry written: the largest whole number of blocks within MAX_SEGMENT_LENGTH sectors. */
const MAX_PIECE = Math.floor((MAX_SEGMENT_LENGTH * SECTOR) / BLOCK) * BLOCK;

export interface RawImageBuilderOptions {
  /** Work directory of the disk (created; `disk.img`, `shadow.img`, `mnt`). */
  dir: string;
  /** Committed layer files the image starts from, bottom first. */
  lowers: readonly string[];
  /** Bytes; used when `lowers` is empty. */
  virtualSize: number;
  /** Make the file system first. */
  mkfs: boolean;
  /** `fstype[;mountopts[;mkfsopts]]`, default `ext4` with upstream's options. */
  fsType?: string;
  applier: LayerApplier;
}

/** One layer of {@link RawImageBuilder.build}. */
export interface RawLayerOptions {
  /** Work directory of this layer (created): `overlaybd.commit`. */
  dir: string;
  /** This layer's UUID and its parent's (the chain-ID UUIDs). */
  uuid: string;
  parentUuid?: string | undefined;
  zfile: { algorithm: 'lz4' | 'zstd'; blockSize: number };
  applyOptions?: ApplyOptions;
  /**
   * Checked after the apply, before the layer is made: the blob's digest and size (its
   * descriptor) and the uncompressed digest (its diff_id). `what` starts the error
   * message (default "Cannot apply the layer").
   */
  expect?: { blobDigest?: string; blobSize?: number; diffId?: string; what?: string };
  /** Called once the apply is done, before the layer's blocks are collected and committed. */
  onCommit?: () => void;
  /**
   * No layer follows: the disk does not change again, so its changed blocks are committed
   * from the disk, and the shadow is not brought up to date. Later builds are refused.
   */
  last?: boolean;
}

export interface RawBuiltLayer {
  stats: ApplyStats;
  /** Resolves to `DIR/overlaybd.commit` once the layer is committed. */
  committed: Promise<string>;
}

function checkExpected(stats: ApplyStats, expect: RawLayerOptions['expect']): void {
  if (expect === undefined) return;
  const what = expect.what ?? 'Cannot apply the layer';
  if ((expect.blobDigest !== undefined && stats.blobDigest !== expect.blobDigest) || (expect.blobSize !== undefined && stats.blobBytes !== expect.blobSize)) {
    throw new DataCorruptionError(`${what}: the blob has ${stats.blobBytes} bytes hashing to ${stats.blobDigest}, expected ${expect.blobSize ?? '?'} bytes hashing to ${expect.blobDigest ?? '?'}`);
  }
  if (expect.diffId !== undefined && stats.diffId !== expect.diffId) {
    throw new DataCorruptionError(`${what}: its content hashes to ${stats.diffId}, the config says ${expect.diffId}`);
  }
}

function lower(file: string): LowerConfig {
  return { file: resolve(file), dir: '', digest: '', size: 0, targetFile: '', targetDigest: '', gzipIndex: '' };
}

async function readFull(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      buf.fill(0, done);
      return;
    }
    done += bytesRead;
  }
}

async function writeFull(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < buf.length; ) done += (await fh.write(buf, done, buf.length - done, position + done)).bytesWritten;
}

/** The union of two sorted extent lists, widened to whole blocks and clipped to `size`. */
export function unionExtents(a: readonly Extent[], b: readonly Extent[], size: number): Extent[] {
  const all = [...a, ...b].map(([s, e]): [number, number] => [Math.floor(s / BLOCK) * BLOCK, Math.min(size, Math.ceil(e / BLOCK) * BLOCK)]);
  all.sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [s, e] of all) {
    if (s >= e) continue;
    const last = out[out.length - 1];
    if (last !== undefined && s <= last[1]) last[1] = Math.max(last[1], e);
    else out.push([s, e]);
  }
  return out;
}

/**
 * Finds every block of `disk` that differs from `shadow` and, unless `update` is false,
 * copies it into `shadow`. Returns the changed byte ranges (whole blocks, in order,
 * adjacent ones merged). Only the union of both files' data extents is compared
 * (everything else reads zeros on both), block by block on two pool threads
 * (`native.diffRanges`): this sits between two layers' applies, where nothing else runs.
 */
export async function diffInto(disk: FileHandle, shadow: FileHandle, options: { size: number; update?: boolean }): Promise<Extent[]> {
  const { size, update = true } = options;
  const ranges = unionExtents(await seekDataExtents(disk, 0, size), await seekDataExtents(shadow, 0, size), size);
  const flat = new Float64Array(ranges.length * 2);
  ranges.forEach(([s, e], i) => flat.set([s, e], 2 * i));
  const changed = await native.diffRanges(disk.fd, shadow.fd, flat, update ? 1 : 0).catch((e: Error) => {
    throw new FailedPreconditionError(`Cannot compare the disk image with its shadow: ${e.message}`);
  });
  const out: Extent[] = [];
  for (let i = 0; i < changed.length; i += 2) out.push([changed[i] as number, changed[i + 1] as number]);
  return out;
}

/** LSMT segments (data at the same offset of source 0) of byte ranges, split to the entry limit. */
export function rangeSegments(ranges: readonly Extent[]): Segment[] {
  const out: Segment[] = [];
  for (const [start, end] of ranges) {
    for (let at = start; at < end; at += MAX_PIECE) {
      const length = Math.min(MAX_PIECE, end - at) / SECTOR;
      out.push({ offset: at / SECTOR, length, moffset: at / SECTOR, zeroed: false, tag: 0 });
    }
  }
  return out;
}

/** Copies the data extents of `src` into `dst` (same offsets; holes stay holes). */
async function copySparse(src: FileHandle, dst: FileHandle, size: number): Promise<void> {
  const buf = Buffer.allocUnsafe(CHUNK);
  for (const [start, end] of await seekDataExtents(src, 0, size)) {
    for (let at = start; at < end; at += CHUNK) {
      const piece = buf.subarray(0, Math.min(CHUNK, end - at));
      await readFull(src, piece, at);
      await writeFull(dst, piece, at);
    }
  }
  await dst.truncate(size);
}

/**
 * The disk is scratch (its layers are what is kept): ext4 is mounted `nobarrier`, so
 * remounting read-only between layers writes the file system back into `disk.img` without
 * also flushing `disk.img` to the host's disk (the loop device turns a flush into an
 * fsync of its file). Other file systems, and an explicit `barrier` option, are left alone.
 */
export function scratchMountSpec(spec: FsSpec): FsSpec {
  if (spec.fstype !== 'ext4' || spec.mountOptions.some((o) => /^(no)?barrier/.test(o))) return spec;
  return { ...spec, mountOptions: [...spec.mountOptions, 'nobarrier'] };
}

export class RawImageBuilder {
  readonly #o: RawImageBuilderOptions;
  readonly #spec: FsSpec;
  readonly #mnt: string;
  readonly #size: number;
  readonly #disk: FileHandle;
  readonly #shadow: FileHandle;
  readonly #loop: string;
  /** The commit in flight (settled: never rejects). */
  #lastCommit: Promise<void> = Promise.resolve();
  #closed = false;
  /** A build with `last` was made. */
  #finished = false;
  #mounted = false;
  #closing: Promise<void> | undefined;

  private constructor(o: RawImageBuilderOptions, parts: { spec: FsSpec; size: number; disk: FileHandle; shadow: FileHandle; loop: string }) {
    this.#o = o;
    this.#spec = parts.spec;
    this.#size = parts.size;
    this.#disk = parts.disk;
    this.#shadow = parts.shadow;
    this.#loop = parts.loop;
    this.#mnt = join(resolve(o.dir), 'mnt');
  }

  /** Creates the disk (from the lowers, or empty with `mkfs`) and attaches it. */
  static async open(o: RawImageBuilderOptions): Promise<RawImageBuilder> {
    const dir = resolve(o.dir);
    const spec = parseFsSpec(o.fsType ?? 'ext4');
    o.applier.prepare?.(); // the applier gets ready (its process starts) while the disk is made
    await mkdir(join(dir, 'mnt'), { recursive: true });
    const diskPath = join(dir, 'disk.img');
    const shadowPath = join(dir, 'shadow.img');
    await rm(diskPath, { force: true });
    await rm(shadowPath, { force: true });
    let size = o.virtualSize;
    if (o.lowers.length > 0) {
      const device = await openDevice({ repoBlobUrl: '', lowers: o.lowers.map(lower), upper: undefined, resultFile: '', accelerationLayer: false, recordTracePath: '', download: undefined });
      try {
        size = device.size;
        await exportRaw(device, diskPath);
      } finally {
        await device.close();
      }
    }
    const disk = await open(diskPath, o.lowers.length > 0 ? 'r+' : 'w+', 0o600);
    let shadow: FileHandle | undefined;
    let loop: string | undefined;
    try {
      await disk.truncate(size);
      shadow = await open(shadowPath, 'w+', 0o600);
      await copySparse(disk, shadow, size);
      loop = await attachLoop(diskPath, { readOnly: false, directIo: false });
      if (o.mkfs) await mkfs(loop, spec);
      return new RawImageBuilder(o, { spec, size, disk, shadow, loop });
    } catch (e) {
      if (loop !== undefined) await detachLoop(loop).catch(() => {});
      await shadow?.close();
      await disk.close();
      throw e;
    }
  }

  /** Virtual size of the image in bytes. */
  get size(): number {
    return this.#size;
  }

  /**
   * Applies `layer` onto the disk and makes it a layer in `options.dir`. Resolves once
   * the layer's blocks are in its writable layer; the commit continues in the background
   * (`committed`). Layers must be built one after the other.
   */
  async build(layer: AsyncIterable<Uint8Array>, options: RawLayerOptions): Promise<RawBuiltLayer> {
    if (this.#closed) throw new FailedPreconditionError('Cannot build a layer: the disk image is closed');
    if (this.#finished) throw new FailedPreconditionError('Cannot build a layer: the last layer of this disk image was built');
    this.#finished = options.last === true;
    const applier = this.#o.applier;
    applier.prepare?.();
    // Mounted once, then read-only between layers: remounting read-only writes everything
    // back and marks the file system clean, as an unmount does, but keeps the kernel's
    // inode and directory caches for the next layer.
    if (this.#mounted) await remountFs(this.#mnt, { writable: true });
    else await mountFs(this.#loop, this.#mnt, { spec: scratchMountSpec(this.#spec), writable: true });
    this.#mounted = true;
    let stats: ApplyStats;
    try {
      const applyOptions: ApplyOptions = { maxFileSize: this.#size, ...options.applyOptions };
      stats = await applier.apply(layer, this.#mnt, applyOptions);
    } finally {
      await remountFs(this.#mnt, { writable: false });
    }
    checkExpected(stats, options.expect);
    options.onCommit?.();
    const dir = resolve(options.dir);
    await mkdir(dir, { recursive: true });
    const file = join(dir, 'overlaybd.commit');
    // The previous layer's commit reads the shadow: it must be done before the shadow changes.
    await this.#lastCommit;
    // The last layer's changed blocks are committed from the disk, which does not change
    // again (the shadow is left as it is); any other layer's are copied into the shadow
    // first, as the next apply changes the disk.
    const last = options.last === true;
    const changed = await diffInto(this.#disk, this.#shadow, { size: this.#size, update: !last });
    const source = await openFileReader(join(resolve(this.#o.dir), last ? 'disk.img' : 'shadow.img'));
    const committed = this.#commit({ source, segments: rangeSegments(changed), file }, options);
    committed.catch(() => {}); // the caller awaits it; close() waits for it
    this.#lastCommit = committed.then(
      () => {},
      () => {},
    );
    return { stats, committed };
  }

  /** The zfile settings and LSMT header of a layer's commit. */
  #commitSettings(options: RawLayerOptions): { zfile: RawLayerOptions['zfile'] & { verify: true; rewriteHeader: true }; header: CommitHeader } {
    return {
      zfile: { ...options.zfile, verify: true, rewriteHeader: true },
      header: { virtualSize: this.#size, uuid: options.uuid, ...(options.parentUuid !== undefined ? { parentUuid: options.parentUuid } : {}) },
    };
  }

  /** Commits `segments` of `source` (a tar-wrapped ZFile, `overlaybd-commit -z -t`); closes `source`. */
  async #commit({ source, segments, file }: { source: FileReader; segments: Segment[]; file: string }, options: RawLayerOptions): Promise<string> {
    try {
      const { zfile, header } = this.#commitSettings(options);
      await writeLayerFile(file, { zfile, tar: true, overwrite: true }, (sink) => commitLayer({ segments, sources: [source], header }, sink));
      return file;
    } finally {
      await source.close();
    }
  }

  /**
   * Detaches the disk while the last commit finishes, then deletes the disk and the
   * shadow. Later calls return the same promise.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    const dir = resolve(this.#o.dir);
    const releaseDisk = async (): Promise<void> => {
      if (await isMountPoint(this.#mnt)) await umountFs(this.#mnt);
      this.#mounted = false;
      await detachLoop(this.#loop);
      // A last layer's commit still reads disk.img.
      await this.#lastCommit;
      await this.#disk.close();
      await rm(join(dir, 'disk.img'), { force: true });
    };
    const [disk] = await Promise.allSettled([releaseDisk(), this.#lastCommit]);
    await this.#shadow.close();
    await rm(join(dir, 'shadow.img'), { force: true });
    if (disk.status === 'rejected') throw disk.reason;
  }
}
