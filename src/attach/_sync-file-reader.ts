/**
 * A `BlobReader` over a local file whose reads are synchronous `pread`s behind a
 * resolved promise. For FUSE reader threads that serve reads themselves (see
 * `_read-device.ts`): the thread has nothing else to do while a read runs, and a
 * synchronous read wakes no other thread (the libuv pool would cost two wake-ups).
 * Never use it on a thread that serves anything else.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { BlobReader } from '../io/blob-reader.ts';
import { clampRead } from '../io/blob-reader.ts';
import { FailedPreconditionError, NotFoundError } from '../io/errors.ts';

export class SyncFileReader implements BlobReader {
  readonly size: number;
  readonly path: string;
  #fd: number | undefined;

  constructor(path: string) {
    try {
      this.#fd = openSync(path, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`Cannot open ${path}: no such file`, { cause: e });
      throw e;
    }
    this.size = fstatSync(this.#fd).size;
    this.path = path;
  }

  readAt(buf: Uint8Array, offset: number): Promise<number> {
    const fd = this.#fd;
    if (fd === undefined) return Promise.reject(new FailedPreconditionError(`Cannot read ${this.path}: reader is closed`));
    const want = clampRead(this.size, offset, buf.length);
    let done = 0;
    try {
      while (done < want) {
        const n = readSync(fd, buf, done, want - done, offset + done);
        if (n === 0) break;
        done += n;
      }
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return Promise.resolve(done);
  }

  close(): Promise<void> {
    const fd = this.#fd;
    this.#fd = undefined;
    if (fd !== undefined) closeSync(fd);
    return Promise.resolve();
  }
}
