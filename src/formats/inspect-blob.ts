/**
 * What `obd info` shows about any layer blob: the tar wrapper, the ZFile records and
 * the LSMT header, trailer and index statistics, each where present.
 */
import type { BlobReader } from '../io/blob-reader.ts';
import { readBytes } from '../io/blob-reader.ts';
import { openFileReader } from '../io/file-reader.ts';
import { DataCorruptionError } from '../io/errors.ts';
import { openTarPayload } from './tar/wrapper.ts';
import { isZFile, ZFileReader, type ZFileInfo } from './zfile/reader.ts';
import { decodeHeaderTrailer, HEADER_TRAILER_SIZE, isDataFile, isSparse, type HeaderTrailer } from './lsmt/header-trailer.ts';
import { decodeSegments, INVALID_OFFSET, SEGMENT_SIZE, type Segment } from './lsmt/segment.ts';
import { openRoLayer } from './lsmt/ro-layer.ts';

export interface IndexStats {
  /** Entries stored, padding included. */
  stored: number;
  valid: number;
  zeroed: number;
  /** Bytes of mapped, non-zeroed data. */
  dataBytes: number;
  first: Segment[];
}

export interface LsmtInfo {
  kind: 'sealed' | 'writable-data' | 'writable-index' | 'sparse-data';
  header: HeaderTrailer;
  trailer: HeaderTrailer | null;
  index: IndexStats | null;
}

export interface BlobInfo {
  path: string;
  size: number;
  tar: { payloadOffset: number; payloadSize: number } | null;
  zfile: ZFileInfo | null;
  lsmt: LsmtInfo | null;
  /** Why the content is not an LSMT blob, when it is not. */
  note?: string;
}

function stats(segments: readonly Segment[], stored: number): IndexStats {
  const valid = segments.filter((s) => s.offset !== INVALID_OFFSET);
  return {
    stored,
    valid: valid.length,
    zeroed: valid.filter((s) => s.zeroed).length,
    dataBytes: valid.reduce((a, s) => a + (s.zeroed ? 0 : s.length * 512), 0),
    first: valid.slice(0, 4),
  };
}

async function inspectLsmt(inner: BlobReader): Promise<LsmtInfo> {
  const header = decodeHeaderTrailer(await readBytes(inner, 0, HEADER_TRAILER_SIZE, 'LSMT header'));
  if (!isDataFile(header)) {
    const count = Math.floor((inner.size - HEADER_TRAILER_SIZE) / SEGMENT_SIZE);
    const bytes = await readBytes(inner, HEADER_TRAILER_SIZE, count * SEGMENT_SIZE, 'LSMT index file');
    return { kind: 'writable-index', header, trailer: null, index: stats(decodeSegments(bytes), count) };
  }
  try {
    const layer = await openRoLayer(inner, { what: 'LSMT blob' });
    return { kind: 'sealed', header: layer.header, trailer: layer.trailer, index: stats(layer.segments, layer.indexEntries) };
  } catch (e) {
    if (!(e instanceof DataCorruptionError)) throw e;
    // An unsealed data file of a writable layer has no trailer; its index lives elsewhere.
    return { kind: isSparse(header) ? 'sparse-data' : 'writable-data', header, trailer: null, index: null };
  }
}

/** Inspects a local file. */
export async function inspectBlob(path: string): Promise<BlobInfo> {
  return inspectReader(await openFileReader(path), path);
}

/** Inspects any blob (local or remote); closes `raw`. */
export async function inspectReader(raw: BlobReader, path: string): Promise<BlobInfo> {
  let top: BlobReader = raw;
  try {
    const payload = await openTarPayload(raw);
    if (payload !== null) top = payload;
    let zfile: ZFileReader | null = null;
    if (await isZFile(top)) {
      zfile = await ZFileReader.open(top, { name: path });
      top = zfile;
    }
    const info: BlobInfo = {
      path,
      size: raw.size,
      tar: payload === null ? null : { payloadOffset: payload.start, payloadSize: payload.size },
      zfile: zfile?.info ?? null,
      lsmt: null,
    };
    if (top.size < HEADER_TRAILER_SIZE) {
      info.note = `content is ${top.size} bytes, smaller than an LSMT header`;
      return info;
    }
    try {
      info.lsmt = await inspectLsmt(top);
    } catch (e) {
      if (!(e instanceof DataCorruptionError)) throw e;
      info.note = e.message;
    }
    return info;
  } finally {
    await top.close();
  }
}
