/**
 * Child-process side of `SubprocessApplier`. For each layer: an IPC message with the
 * options (JSON `{ rootDir, maxFileSize? }`), then the layer on standard input as frames
 * (u32 little-endian length, bytes) ending with an empty frame; it applies the layer and
 * reports over IPC: `progress`, `warning`, then one `result` or `error` message. After a
 * result it waits for the next layer (the process stays warm: modules loaded, code
 * optimised); after an error the parent kills it. It exits when the parent goes away.
 */
import { DirectoryApplier } from './directory-applier.ts';
import type { ApplyOptions } from './layer-applier.ts';

interface ChildOptions {
  rootDir: string;
  maxFileSize?: number;
}

function send(message: object): Promise<void> {
  return new Promise((resolve) => {
    if (process.send === undefined) {
      resolve();
      return;
    }
    process.send(message, undefined, {}, () => resolve());
  });
}

/** Bytes buffered before standard input is paused (backpressure to the parent). */
const HIGH_WATER = 8 << 20;

/** Standard input as frames: `layer()` yields one layer's bytes, up to its empty frame. */
class FrameReader {
  readonly #input: NodeJS.ReadStream;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #ended = false;
  #wake: (() => void) | undefined;

  constructor(input: NodeJS.ReadStream) {
    this.#input = input;
    input.on('data', (c: Buffer) => {
      this.#chunks.push(c);
      this.#buffered += c.length;
      if (this.#buffered >= HIGH_WATER) input.pause();
      this.#wake?.();
    });
    input.on('end', () => {
      this.#ended = true;
      this.#wake?.();
    });
  }

  /** Waits until `n` bytes are buffered; false at the end of the input. */
  async #have(n: number): Promise<boolean> {
    while (this.#buffered < n) {
      if (this.#ended) return false;
      if (this.#input.isPaused()) this.#input.resume();
      await new Promise<void>((resolve) => (this.#wake = resolve));
      this.#wake = undefined;
    }
    return true;
  }

  /** Up to `max` bytes from the first buffered chunk (no copy). */
  #takeSome(max: number): Buffer {
    const first = this.#chunks[0] as Buffer;
    const n = Math.min(max, first.length);
    if (n === first.length) this.#chunks.shift();
    else this.#chunks[0] = first.subarray(n);
    this.#buffered -= n;
    if (this.#buffered < HIGH_WATER && this.#input.isPaused()) this.#input.resume();
    return first.subarray(0, n);
  }

  /** Exactly `n` buffered bytes (copied when they span chunks). */
  #take(n: number): Buffer {
    const parts: Buffer[] = [];
    for (let got = 0; got < n; ) {
      const part = this.#takeSome(n - got);
      parts.push(part);
      got += part.length;
    }
    return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts, n);
  }

  async *layer(): AsyncGenerator<Uint8Array> {
    for (;;) {
      if (!(await this.#have(4))) return; // the parent went away: the tar reader reports the truncation
      const n = this.#take(4).readUInt32LE(0);
      if (n === 0) return;
      for (let left = n; left > 0; ) {
        if (!(await this.#have(1))) return;
        const piece = this.#takeSome(left);
        left -= piece.length;
        yield piece;
      }
    }
  }
}

async function run(): Promise<void> {
  process.on('disconnect', () => process.exit(0));
  const frames = new FrameReader(process.stdin);
  const queue: ChildOptions[] = [];
  let wake: (() => void) | undefined;
  process.on('message', (m: ChildOptions) => {
    queue.push(m);
    wake?.();
  });
  for (;;) {
    while (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
    const options = queue.shift() as ChildOptions;
    const applyOptions: ApplyOptions = {
      onWarning: (w) => void send({ type: 'warning', ...w }),
      onProgress: (p) => void send({ type: 'progress', ...p }),
      ...(options.maxFileSize !== undefined ? { maxFileSize: options.maxFileSize } : {}),
    };
    try {
      const stats = await new DirectoryApplier().apply(frames.layer(), options.rootDir, applyOptions);
      await send({ type: 'result', stats });
    } catch (e) {
      const err = e as { code?: unknown; name?: unknown; message?: unknown };
      await send({ type: 'error', code: typeof err.code === 'string' ? err.code : undefined, name: String(err.name ?? 'Error'), message: String(err.message ?? e) });
      process.exit(1);
    }
  }
}

void run();
