/**
 * The block-device contract served by the frontends (FUSE, NBD) and implemented by
 * LSMT layers, stacks and the device service.
 *
 * Offsets and lengths are bytes; implementations state their alignment (LSMT needs
 * 512-byte multiples, lsmt.md §12). `readAt` always fills the whole buffer inside
 * `size` (holes read as zeros). Writes, trims and flushes reject with
 * `FailedPreconditionError` on a read-only device.
 */
import type { BlobReader } from './blob-reader.ts';

export interface BlockDevice extends BlobReader {
  readonly readOnly: boolean;
  writeAt(buf: Uint8Array, offset: number): Promise<void>;
  /** Discard `[offset, offset+length)`: it reads as zeros afterwards. */
  trim(offset: number, length: number): Promise<void>;
  /** Make every completed write durable. */
  flush(): Promise<void>;
}
