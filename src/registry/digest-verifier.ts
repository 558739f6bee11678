/**
 * A pass-through stream that hashes and counts what flows through it and fails at the
 * end when the content is not what was asked for (STYLE.md §6, ggcr `internal/verify`):
 * too many bytes fail as soon as they pass `size`; a wrong digest or a short stream
 * fail at EOF with `DataCorruptionError`, so a consumer never sees a clean end of bad
 * content.
 *
 * @example
 * ```ts
 * const verified = body.pipeThrough(new DigestVerifier({ digest, size }));
 * ```
 */
import type { Hash } from 'node:crypto';
import { DataCorruptionError } from '../io/errors.ts';
import { hasherFor } from './digest.ts';

export interface DigestVerifierOptions {
  readonly digest: string;
  /** Expected size in bytes, when known. */
  readonly size?: number;
  /** Names the content in errors, e.g. "blob sha256:… of example.com/a/b". */
  readonly what?: string;
}

interface VerifierState {
  readonly hash: Hash;
  count: number;
}

export class DigestVerifier extends TransformStream<Uint8Array, Uint8Array> {
  #state: VerifierState;

  constructor(options: DigestVerifierOptions) {
    const what = options.what ?? `content ${options.digest}`;
    const state: VerifierState = { hash: hasherFor(options.digest), count: 0 };
    super({
      transform: (chunk, controller) => {
        state.count += chunk.length;
        if (options.size !== undefined && state.count > options.size) {
          throw new DataCorruptionError(`Cannot verify ${what}: more than the expected ${options.size} bytes`);
        }
        state.hash.update(chunk);
        controller.enqueue(chunk);
      },
      flush: () => {
        if (options.size !== undefined && state.count !== options.size) {
          throw new DataCorruptionError(`Cannot verify ${what}: got ${state.count} bytes, expected ${options.size}`);
        }
        const algorithm = options.digest.slice(0, options.digest.indexOf(':'));
        const actual = `${algorithm}:${state.hash.digest('hex')}`;
        if (actual !== options.digest) throw new DataCorruptionError(`Cannot verify ${what}: content hashes to ${actual}`);
      },
    });
    this.#state = state;
  }

  /** Bytes seen so far. */
  get bytes(): number {
    return this.#state.count;
  }
}
