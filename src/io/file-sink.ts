import { open, rm, type FileHandle } from 'node:fs/promises';
import type { ByteSink } from './byte-sink.ts';
import { AlreadyExistsError } from './errors.ts';

/** Size of the write-behind buffer: large sequential writes, few syscalls. */
const BUFFER_SIZE = 1 << 20;

/**
 * A `ByteSink` writing a new local file through a 1 MiB buffer.
 *
 * Created exclusively (mode 0644) unless `overwrite`, as the upstream tools do.
 */
export class FileSink implements ByteSink {
  #fh: FileHandle;
  #buf = new Uint8Array(BUFFER_SIZE);
  #buffered = 0;
  #flushed = 0;
  readonly path: string;

  private constructor(fh: FileHandle, path: string) {
    this.#fh = fh;
    this.path = path;
  }

  static async create(path: string, options: { overwrite?: boolean } = {}): Promise<FileSink> {
    if (options.overwrite === true) await rm(path, { force: true });
    try {
      return new FileSink(await open(path, 'wx', 0o644), path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw new AlreadyExistsError(`Cannot create ${path}: file exists (use -f to overwrite)`, { cause: e });
      }
      throw e;
    }
  }

  get position(): number {
    return this.#flushed + this.#buffered;
  }

  async write(buf: Uint8Array): Promise<void> {
    if (buf.length >= BUFFER_SIZE) {
      await this.#drain();
      await this.#writeAll(buf, this.#flushed);
      this.#flushed += buf.length;
      return;
    }
    if (this.#buffered + buf.length > BUFFER_SIZE) await this.#drain();
    this.#buf.set(buf, this.#buffered);
    this.#buffered += buf.length;
  }

  async writeAt(buf: Uint8Array, offset: number): Promise<void> {
    if (offset < 0 || offset + buf.length > this.position) {
      throw new RangeError(`writeAt [${offset}, +${buf.length}) outside the ${this.position} bytes written`);
    }
    await this.#drain();
    await this.#writeAll(buf, offset);
  }

  async close(): Promise<void> {
    await this.#drain();
    await this.#fh.close();
  }

  async #drain(): Promise<void> {
    if (this.#buffered === 0) return;
    await this.#writeAll(this.#buf.subarray(0, this.#buffered), this.#flushed);
    this.#flushed += this.#buffered;
    this.#buffered = 0;
  }

  async #writeAll(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const { bytesWritten } = await this.#fh.write(buf, done, buf.length - done, offset + done);
      done += bytesWritten;
    }
  }
}
