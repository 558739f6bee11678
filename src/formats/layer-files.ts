/**
 * File-level operations on layer blobs, shared by the CLI and the convertor:
 * compose output sinks (`file ← tar ← ZFile`), compress, decompress and verify files.
 * A failed write removes its partial output.
 */
import { rm } from 'node:fs/promises';
import type { BlobReader } from '../io/blob-reader.ts';
import type { ByteSink } from '../io/byte-sink.ts';
import { FileSink } from '../io/file-sink.ts';
import { openFileReader } from '../io/file-reader.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import { ZFileWriter } from './zfile/writer.ts';
import { TarWrapSink } from './tar/wrapper.ts';
import { openLayerBlob } from './open-layer-blob.ts';

export interface ZFileSinkOptions {
  algorithm: 'lz4' | 'zstd';
  /** Bytes. */
  blockSize: number;
  verify?: boolean;
  rewriteHeader?: boolean;
}

export interface LayerSinkOptions {
  /** Compress into a ZFile with these options; plain output when absent. */
  zfile?: ZFileSinkOptions | undefined;
  /** Wrap the (compressed) output in overlaybd's tar. */
  tar?: boolean;
}

/** Stacks the requested encoders on `base`; closing the result closes `base`. */
export async function createLayerSink(base: ByteSink, options: LayerSinkOptions): Promise<ByteSink> {
  let sink: ByteSink = base;
  if (options.tar === true) sink = await TarWrapSink.create(sink);
  if (options.zfile !== undefined) {
    sink = await ZFileWriter.create(sink, {
      algorithm: options.zfile.algorithm,
      blockSize: options.zfile.blockSize,
      verify: options.zfile.verify ?? true,
      rewriteHeader: options.zfile.rewriteHeader ?? false,
    });
  }
  return sink;
}

/**
 * Creates `path` (exclusively unless `overwrite`), runs `produce` on a sink stack over
 * it, closes it; on failure closes and removes the partial file.
 */
export async function writeLayerFile<T>(
  path: string,
  options: LayerSinkOptions & { overwrite?: boolean },
  produce: (sink: ByteSink) => Promise<T>,
): Promise<T> {
  const file = await FileSink.create(path, { overwrite: options.overwrite ?? false });
  try {
    const sink = await createLayerSink(file, options);
    const result = await produce(sink);
    await sink.close();
    return result;
  } catch (e) {
    await file.close().catch(() => {});
    await rm(path, { force: true });
    throw e;
  }
}

/** Copies a whole reader into a sink in 1 MiB reads. */
export async function copyToSink(reader: BlobReader, sink: ByteSink): Promise<void> {
  const chunk = new Uint8Array(1 << 20);
  for (let off = 0; off < reader.size; ) {
    const n = await reader.readAt(chunk, off);
    if (n <= 0) throw new FailedPreconditionError(`Cannot copy: source ended at ${off} of ${reader.size} bytes`);
    await sink.write(chunk.subarray(0, n));
    off += n;
  }
}

/** `overlaybd-zfile SRC DST`: compress a plain file (verify on, no header rewrite). */
export async function compressFile(
  src: string,
  dst: string,
  options: ZFileSinkOptions & { tar?: boolean; overwrite?: boolean },
): Promise<void> {
  const reader = await openFileReader(src);
  try {
    await writeLayerFile(dst, { zfile: options, tar: options.tar ?? false, overwrite: options.overwrite ?? false }, (sink) =>
      copyToSink(reader, sink),
    );
  } finally {
    await reader.close();
  }
}

/**
 * `overlaybd-zfile DST` (input on a stream): compress whatever `input` yields. Short
 * reads from a pipe are buffered into whole blocks by the writer, so no short middle
 * block is ever written (upstream hazard, zfile.md §5.5).
 */
export async function compressStream(
  input: AsyncIterable<Uint8Array>,
  dst: string,
  options: ZFileSinkOptions & { tar?: boolean; overwrite?: boolean },
): Promise<void> {
  await writeLayerFile(dst, { zfile: options, tar: options.tar ?? false, overwrite: options.overwrite ?? false }, async (sink) => {
    for await (const chunk of input) await sink.write(chunk);
  });
}

/** `overlaybd-zfile -x SRC DST`: decode a (possibly tar-wrapped) ZFile to a plain file. */
export async function decompressFile(src: string, dst: string, options: { overwrite?: boolean } = {}): Promise<void> {
  const opened = await openLayerBlob(await openFileReader(src));
  try {
    await writeLayerFile(dst, { overwrite: options.overwrite ?? false }, (sink) => copyToSink(opened.reader, sink));
  } finally {
    await opened.reader.close();
  }
}

/** `overlaybd-zfile --verify SRC`: check every block CRC without decompressing. */
export async function verifyZFile(src: string): Promise<{ blocks: number }> {
  const opened = await openLayerBlob(await openFileReader(src));
  try {
    const z = opened.zfile;
    if (z === null) throw new FailedPreconditionError(`Cannot verify ${src}: not a ZFile`);
    if (!z.info.verify) throw new FailedPreconditionError(`Cannot verify ${src}: the ZFile has no block CRCs`);
    await z.verifyAll();
    return { blocks: z.info.indexSize };
  } finally {
    await opened.reader.close();
  }
}

