/**
 * A {@link RangeSource} over one registry blob: the contract the remote blob reader
 * builds on. Each `fetch` is one ranged GET (plus auth and redirect handling on first
 * use), checked against the blob's known size. `stream` yields the same bytes as they
 * arrive (the optional streaming ability of `remote-blob-reader.ts`, so a stalled
 * transfer can be told from a slow one).
 *
 * @example
 * ```ts
 * const source = createBlobRangeSource(client, repo, { digest: layer.digest, size: layer.size });
 * const bytes = await source.fetch(4096, 65536);
 * ```
 */
import type { RegistryClient } from './client.ts';
import { checkDigest } from './digest.ts';
import type { RangeSource } from './range-source.ts';
import type { Repository } from './reference.ts';

export interface BlobDescriptor {
  readonly digest: string;
  readonly size: number;
}

/** A range source that can also deliver a range piece by piece. */
export interface BlobRangeSource extends RangeSource {
  /** Yields exactly `length` bytes at `offset`, as they arrive. */
  stream(offset: number, length: number, signal?: AbortSignal): AsyncIterable<Uint8Array>;
}

/** Creates the range source for `blob` (digest and size from its descriptor) in `repo`. */
export function createBlobRangeSource(client: RegistryClient, repo: Repository, blob: BlobDescriptor): BlobRangeSource {
  const digest = checkDigest(blob.digest);
  const { size } = blob;
  if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`Invalid blob size ${size}`);
  const check = (offset: number, length: number): void => {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
      throw new RangeError(`Cannot fetch ${length} bytes at ${offset} of blob ${digest}: the blob has ${size} bytes`);
    }
  };
  const range = (offset: number, length: number, signal: AbortSignal | undefined) => ({ offset, length, blobSize: size, ...(signal === undefined ? {} : { signal }) });
  return {
    size,
    async fetch(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array> {
      check(offset, length);
      return client.getBlobRange(repo, digest, range(offset, length, signal));
    },
    stream(offset: number, length: number, signal?: AbortSignal): AsyncIterable<Uint8Array> {
      check(offset, length);
      return client.streamBlobRange(repo, digest, range(offset, length, signal));
    },
  };
}
