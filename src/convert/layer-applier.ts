/**
 * The one seam between the convertor and whatever writes a layer into a file system.
 *
 * A `LayerApplier` takes an OCI layer blob (a tar, gzip- or zstd-compressed or plain,
 * detected by magic) and replays it onto the tree under `rootDir`, with OCI whiteout
 * semantics (erofs-and-fs.md §2). Today's implementations write through the kernel:
 * `DirectoryApplier` in-process onto any directory (the convertor's), `SubprocessApplier`
 * the same in a child process (`obd apply`'s: the FUSE server that backs the mounted
 * file system runs in that process and must never wait on its own file-system writes). A userspace ext4 writer can replace them behind this interface.
 */
import type { Compression } from './decompress.ts';

/** What an apply did. */
export interface ApplyStats {
  /** Tar members seen (extended headers not counted). */
  entries: number;
  files: number;
  directories: number;
  symlinks: number;
  hardlinks: number;
  /** Character and block devices. */
  devices: number;
  fifos: number;
  /** `.wh.NAME` entries. */
  whiteouts: number;
  /** `.wh..wh..opq` entries. */
  opaques: number;
  /** Entries skipped with a warning (sockets, AUFS metadata). */
  skipped: number;
  /** Extended attributes set. */
  xattrs: number;
  /** Bytes of regular-file data written. */
  fileBytes: number;
  /** Bytes of the uncompressed stream, anything after the end-of-archive marker included. */
  tarBytes: number;
  /** `sha256:<hex>` of the uncompressed stream: the layer's diff_id. */
  diffId: string;
  /** `sha256:<hex>` and size of the blob as given (compressed): its descriptor digest. */
  blobDigest: string;
  blobBytes: number;
  compression: Compression;
}

/** Something applied but not exactly as asked (a skipped socket, an ignored EPERM). */
export interface ApplyWarning {
  entry: string;
  message: string;
}

export interface ApplyOptions {
  /** Largest regular file accepted (bytes); larger declared sizes fail the apply. */
  maxFileSize?: number;
  onWarning?: (w: ApplyWarning) => void;
  /** Called every few MiB of the uncompressed stream. */
  onProgress?: (p: { tarBytes: number; entries: number }) => void;
  /** Stops the apply (between entries in process; by killing the child process). */
  signal?: AbortSignal;
}

export interface LayerApplier {
  /**
   * Applies `layer` onto `rootDir`. Rejects naming the entry (and its stream offset) on
   * an unsafe name, a malformed or truncated stream, or a failed file-system operation;
   * what was written before the failure stays.
   */
  apply(layer: AsyncIterable<Uint8Array>, rootDir: string, options?: ApplyOptions): Promise<ApplyStats>;
  /**
   * Optional: a hint that an `apply` follows soon (called before the device is attached),
   * so the applier can get ready meanwhile (the subprocess applier starts its process).
   */
  prepare?(): void;
  /** Optional: releases what `prepare` made ready and was not used. */
  close?(): Promise<void>;
}

/** Zeroed statistics. */
export function emptyStats(): ApplyStats {
  return {
    entries: 0,
    files: 0,
    directories: 0,
    symlinks: 0,
    hardlinks: 0,
    devices: 0,
    fifos: 0,
    whiteouts: 0,
    opaques: 0,
    skipped: 0,
    xattrs: 0,
    fileBytes: 0,
    tarBytes: 0,
    diffId: '',
    blobDigest: '',
    blobBytes: 0,
    compression: 'none',
  };
}
