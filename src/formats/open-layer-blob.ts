/**
 * Opens a layer blob the way the upstream backstore does (zfile.md §8):
 * `bytes → tar unwrap (if tar) → ZFile decode (if ZFile) → LSMT`.
 *
 * A layer may be a plain LSMT blob, a ZFile of one, or either of these inside a tar
 * wrapper; the caller gets a {@link BlobReader} of the plain LSMT bytes either way.
 *
 * @example
 * ```ts
 * const { reader, wrapped, zfile } = await openLayerBlob(await openFileReader(path));
 * // reader: uncompressed LSMT bytes; reader.close() closes the file too
 * ```
 */
import type { BlobReader } from '../io/blob-reader.ts';
import { openTarPayload } from './tar/wrapper.ts';
import { ZFileReader, isZFile } from './zfile/reader.ts';

/** The result of {@link openLayerBlob}. */
export interface OpenedLayerBlob {
  /** The inner content (plain LSMT bytes). Closing it closes the whole chain, `blob` included. */
  reader: BlobReader;
  /** Whether a tar wrapper was removed. */
  wrapped: boolean;
  /** The ZFile decoder when the content was compressed (the same object as `reader`), else null. */
  zfile: ZFileReader | null;
}

/**
 * Unwraps a tar wrapper and decodes a ZFile when present. On failure nothing is closed:
 * the caller still owns `blob`.
 *
 * @param options.name names the blob in error messages.
 */
export async function openLayerBlob(blob: BlobReader, options: { name?: string } = {}): Promise<OpenedLayerBlob> {
  const payload = await openTarPayload(blob);
  const inner = payload ?? blob;
  if (await isZFile(inner)) {
    const zfile = await ZFileReader.open(inner, options.name === undefined ? {} : { name: options.name });
    return { reader: zfile, wrapped: payload !== null, zfile };
  }
  return { reader: inner, wrapped: payload !== null, zfile: null };
}
