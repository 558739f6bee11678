import { open, type FileHandle } from 'node:fs/promises';
import type { BlobReader } from './blob-reader.ts';
import { clampRead } from './blob-reader.ts';
import { FailedPreconditionError, NotFoundError } from './errors.ts';

/**
 * A `BlobReader` over a local file. The size is taken at open time; the file is
 * treated as immutable while open.
 */
export class FileReader implements BlobReader {
  #fh: FileHandle | undefined;
  readonly size: number;
  readonly path: string;

  private constructor(fh: FileHandle, size: number, path: string) {
    this.#fh = fh;
    this.size = size;
    this.path = path;
  }

  static async open(path: string): Promise<FileReader> {
    let fh: FileHandle;
    try {
      fh = await open(path, 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new NotFoundError(`Cannot open ${path}: no such file`, { cause: e });
      }
      throw e;
    }
    const st = await fh.stat();
    return new FileReader(fh, st.size, path);
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const fh = this.#fh;
    if (fh === undefined) throw new FailedPreconditionError(`Cannot read ${this.path}: reader is closed`);
    const want = clampRead(this.size, offset, buf.length);
    let done = 0;
    while (done < want) {
      const { bytesRead } = await fh.read(buf, done, want - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done;
  }

  async close(): Promise<void> {
    const fh = this.#fh;
    this.#fh = undefined;
    await fh?.close();
  }
}

/** Opens a local file as a {@link BlobReader}. */
export function openFileReader(path: string): Promise<FileReader> {
  return FileReader.open(path);
}
