/**
 * Private helpers shared by the writable layers, commit and seal: file opening with the
 * domain errors, whole-buffer positional I/O, the 512-byte alignment checks, and a
 * `BlobReader` view of a data file that is still growing.
 */
import { randomUUID } from 'node:crypto';
import { open, type FileHandle } from 'node:fs/promises';
import type { BlobReader } from '../../io/blob-reader.ts';
import {
  AlreadyExistsError,
  DataCorruptionError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../../io/errors.ts';
import { decodeHeaderTrailer, HEADER_TRAILER_SIZE, NIL_UUID, parseUuid, type HeaderTrailer } from './header-trailer.ts';
import { INVALID_OFFSET, SECTOR } from './segment.ts';

/** Largest single I/O piece (lsmt.md §8.2, §18). */
export const MAX_IO = 4 << 20;

/** Creates `path` exclusively with mode 0644 (lsmt.md §8.1). */
export async function createExclusive(path: string, what: string): Promise<FileHandle> {
  try {
    return await open(path, 'wx+', 0o644);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new AlreadyExistsError(`Cannot create ${what} ${path}: file exists`, { cause: e });
    }
    throw e;
  }
}

/** Opens an existing file for reading and writing. */
export async function openExisting(path: string, what: string, flags = 'r+'): Promise<FileHandle> {
  try {
    return await open(path, flags);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new NotFoundError(`Cannot open ${what} ${path}: no such file`, { cause: e });
    }
    throw e;
  }
}

/** Writes all of `buf` at `position`. */
export async function writeAll(fh: FileHandle, buf: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesWritten } = await fh.write(buf, done, buf.length - done, position + done);
    done += bytesWritten;
  }
}

/** Reads up to `buf.length` bytes at `position`; returns how many (fewer only at EOF). */
export async function readUpTo(fh: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** Reads and decodes the 4096-byte header at offset 0 of `fh`. */
export async function readHeader(fh: FileHandle, what: string): Promise<HeaderTrailer> {
  const bytes = new Uint8Array(HEADER_TRAILER_SIZE);
  const n = await readUpTo(fh, bytes, 0);
  if (n < HEADER_TRAILER_SIZE) {
    throw new DataCorruptionError(`Cannot open ${what}: file is ${n} bytes, shorter than the 4096-byte header`);
  }
  return decodeHeaderTrailer(bytes, what);
}

/**
 * Checks a write or trim request (lsmt.md §8.2, §19.9): byte `offset` and `length`
 * non-negative multiples of 512, inside the 2^50−1-sector logical range.
 */
export function checkAligned(action: 'write' | 'trim', offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new InvalidArgumentError(`Cannot ${action} at offset ${offset}: offset is not a non-negative integer`);
  }
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new InvalidArgumentError(`Cannot ${action} ${length} bytes: length is not a non-negative integer`);
  }
  if (offset % SECTOR !== 0) {
    throw new InvalidArgumentError(`Cannot ${action} at offset ${offset}: offset is not a multiple of 512`);
  }
  if (length % SECTOR !== 0) {
    throw new InvalidArgumentError(
      `Cannot ${action} ${length} bytes at offset ${offset}: length is not a multiple of 512`,
    );
  }
  if ((offset + length) / SECTOR >= INVALID_OFFSET) {
    throw new InvalidArgumentError(
      `Cannot ${action} ${length} bytes at offset ${offset}: range ends beyond the 2^50-1 sector limit`,
    );
  }
}

/** Rounds `n` up to a multiple of 512. */
export function alignUp(n: number): number {
  return Math.ceil(n / SECTOR) * SECTOR;
}

/**
 * A `BlobReader` over a data file owned by a layer. Its size is the layer's current
 * data end (it grows with appends); closing it does nothing, the layer closes the file.
 */
export class LayerFileReader implements BlobReader {
  #fh: () => FileHandle | undefined;
  #size: () => number;
  readonly path: string;

  constructor(path: string, fh: () => FileHandle | undefined, size: () => number) {
    this.path = path;
    this.#fh = fh;
    this.#size = size;
  }

  get size(): number {
    return this.#size();
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const fh = this.#fh();
    if (fh === undefined) throw new FailedPreconditionError(`Cannot read ${this.path}: layer is closed`);
    const size = this.size;
    if (offset >= size || buf.length === 0) return 0;
    return readUpTo(fh, buf.subarray(0, Math.min(buf.length, size - offset)), offset);
  }

  async close(): Promise<void> {}
}

/** Validates the size and UUID options of a new layer. */
export function layerIdentity(options: {
  virtualSize: number;
  uuid?: string;
  parentUuid?: string;
}): { virtualSize: number; uuid: string; parentUuid: string } {
  if (!Number.isSafeInteger(options.virtualSize) || options.virtualSize < 0) {
    throw new InvalidArgumentError(
      `Cannot create layer of ${options.virtualSize} bytes: size is not a non-negative integer`,
    );
  }
  let uuid = randomUUID().toUpperCase();
  if (options.uuid !== undefined) {
    const parsed = parseUuid(options.uuid);
    if (parsed === undefined) throw new InvalidArgumentError(`Cannot create layer with UUID ${options.uuid}: not a UUID`);
    uuid = parsed;
  }
  const parentUuid = options.parentUuid === undefined ? NIL_UUID : (parseUuid(options.parentUuid) ?? NIL_UUID);
  return { virtualSize: options.virtualSize, uuid, parentUuid };
}
