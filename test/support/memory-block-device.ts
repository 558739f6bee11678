/**
 * A BlockDevice over a Uint8Array, for frontend tests (FUSE, NBD) and benchmarks.
 *
 * It enforces an alignment like the LSMT device does (512 by default; 1 disables the
 * check), records every trim and flush, and has a `hook` run before each operation
 * for fault injection (throw to fail the call, await to delay it).
 *
 * @example
 * ```ts
 * const dev = new MemoryBlockDevice(1 << 20);
 * dev.hook = (op, offset) => { if (op === 'read' && offset === 4096) throw new DataCorruptionError('bad block'); };
 * ```
 */
import type { BlockDevice } from '../../src/io/block-device.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../../src/io/errors.ts';

export type MemoryDeviceOp = 'read' | 'write' | 'trim' | 'flush';

export interface MemoryBlockDeviceOptions {
  readOnly?: boolean;
  /** Required alignment of offsets and lengths in bytes. Default 512; 1 = none. */
  alignment?: number;
}

export class MemoryBlockDevice implements BlockDevice {
  readonly bytes: Uint8Array;
  readonly size: number;
  readonly readOnly: boolean;
  readonly alignment: number;
  /** Every trim, in order. */
  readonly trims: Array<{ offset: number; length: number }> = [];
  /** Operations seen, by kind. */
  readonly counts: Record<MemoryDeviceOp, number> = { read: 0, write: 0, trim: 0, flush: 0 };
  /** Runs before each operation; may throw or delay. */
  hook: ((op: MemoryDeviceOp, offset: number, length: number) => void | Promise<void>) | undefined;
  #closed = false;

  constructor(bytesOrSize: Uint8Array | number, options: MemoryBlockDeviceOptions = {}) {
    this.bytes = typeof bytesOrSize === 'number' ? new Uint8Array(bytesOrSize) : bytesOrSize;
    this.size = this.bytes.length;
    this.readOnly = options.readOnly ?? false;
    this.alignment = options.alignment ?? 512;
  }

  async #enter(op: MemoryDeviceOp, offset: number, length: number): Promise<void> {
    if (this.#closed) throw new FailedPreconditionError(`Cannot ${op}: memory device is closed`);
    if (op !== 'read' && op !== 'flush' && this.readOnly) {
      throw new FailedPreconditionError(`Cannot ${op} at ${offset}: memory device is read-only`);
    }
    if (op !== 'flush') {
      const a = this.alignment;
      if (offset % a !== 0 || (length % a !== 0 && offset + length !== this.size)) {
        throw new InvalidArgumentError(`Cannot ${op} ${length} bytes at ${offset}: not aligned to ${a}`);
      }
      if (offset < 0 || offset + length > this.size) {
        throw new InvalidArgumentError(`Cannot ${op} ${length} bytes at ${offset}: device has ${this.size}`);
      }
    }
    this.counts[op]++;
    if (this.hook !== undefined) await this.hook(op, offset, length);
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const n = Math.max(0, Math.min(buf.length, this.size - offset));
    await this.#enter('read', offset, n);
    buf.set(this.bytes.subarray(offset, offset + n));
    return n;
  }

  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    await this.#enter('write', offset, buf.length);
    this.bytes.set(buf, offset);
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.#enter('trim', offset, length);
    this.trims.push({ offset, length });
    this.bytes.fill(0, offset, offset + length);
  }

  async flush(): Promise<void> {
    await this.#enter('flush', 0, 0);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }
}
