/**
 * The minimal random-access contract a remote reader consumes: a fixed-size byte range
 * of one blob that can be fetched piece by piece.
 *
 * Implementations return exactly `length` bytes starting at `offset` (the caller never
 * asks past `size`), honour `signal`, and throw the typed errors of `src/io/errors.ts`
 * (`UnavailableError` for temporary failures, `NotFoundError`, `DataCorruptionError`…).
 *
 * @example
 * ```ts
 * const source: RangeSource = createBlobRangeSource(client, 'library/alpine', digest, size);
 * const head = await source.fetch(0, 512);
 * ```
 */
export interface RangeSource {
  /** Total size of the blob in bytes. */
  readonly size: number;
  /** Fetch `length` bytes at `offset`; resolves to exactly `length` bytes. */
  fetch(offset: number, length: number, signal?: AbortSignal): Promise<Uint8Array>;
}
