/**
 * Commit (compaction, lsmt.md §13): writes a sealed LSMT blob strictly sequentially into a
 * {@link ByteSink}, so it can stream through a ZFile writer and a tar wrapper.
 *
 * Layout produced: header (flags 0x07, index fields 0) | data of every data segment in
 * offset order | index (coalesced entries padded to a multiple of 256) | trailer (0x06).
 *
 * The index depends only on the segment list, so it is computed first; the data is then
 * copied in chunks of up to 4 MiB, gathering runs that are contiguous in the source into
 * single reads and reading the next chunk while the previous one is being written.
 */
import type { BlobReader } from '../../io/blob-reader.ts';
import { readFully } from '../../io/blob-reader.ts';
import type { ByteSink } from '../../io/byte-sink.ts';
import { InvalidArgumentError } from '../../io/errors.ts';
import type { ReadOnlyLayer, WritableLayer } from './layer.ts';
import {
  decodeHeaderTrailer,
  encodeHeaderTrailer,
  FLAG_DATA,
  FLAG_HEADER,
  FLAG_SEALED,
  HEADER_TRAILER_SIZE,
  newHeaderTrailer,
  NIL_UUID,
  parseUuid,
  type HeaderTrailer,
} from './header-trailer.ts';
import { encodeSegments, MAX_SEGMENT_LENGTH, SECTOR, type Segment } from './segment.ts';

/** Sectors per copied piece: each produces its own entry before coalescing (§13 step 2). */
export const COMMIT_PIECE_SECTORS = 64;
/** Index entries are padded to a multiple of this (4096 bytes, §13 step 4). */
const INDEX_ALIGN_ENTRIES = 256;
/** Bytes of data per sink write / read batch. */
const CHUNK_BYTES = 4 << 20;
/** Concurrent source reads inside one chunk. */
const READ_CONCURRENCY = 8;
/** Entries encoded per index write. */
const INDEX_WRITE_ENTRIES = 65536;

/** Header fields of a committed blob. */
export interface CommitHeader {
  /** Bytes; §13 takes it from the header of source file 0. */
  virtualSize: number;
  /** Written only if a valid UUID; nil otherwise. */
  uuid?: string;
  /** Written only if a valid UUID; nil otherwise. */
  parentUuid?: string;
  /** Commit message (`-m`), at most 256 bytes; strings are encoded as UTF-8. */
  userTag?: string | Uint8Array;
}

/** Input of {@link commitLayer}. */
export interface CommitInput {
  /** Source index in offset order, non-overlapping; `tag` selects the source. */
  segments: readonly Segment[];
  /** Source files by tag; a segment's data is at byte `moffset * 512`. */
  sources: readonly BlobReader[];
  header: CommitHeader;
}

/** Options of the commit functions. */
export interface CommitOptions {
  /** Close the sink when done (default false: the caller closes it). */
  close?: boolean;
}

/** Where the index of the committed blob landed. */
export interface CommitResult {
  /** Bytes from the start of the blob. */
  indexOffset: number;
  /** Entries including padding (as in the trailer). */
  indexSize: number;
}

/**
 * Writes a committed LSMT blob of `input` into `sink` (lsmt.md §13).
 *
 * @example
 * ```ts
 * const sink = new MemorySink();
 * await commitLayer({ segments: layer.segments(), sources: [layer.data], header: { virtualSize: 1 << 30 } }, sink);
 * ```
 */
export async function commitLayer(input: CommitInput, sink: ByteSink, options: CommitOptions = {}): Promise<CommitResult> {
  checkSegments(input);
  const fields = headerFields(input.header);
  await sink.write(encodeHeaderTrailer(newHeaderTrailer({ ...fields, flags: FLAG_HEADER | FLAG_DATA | FLAG_SEALED })));
  await copyData(input, sink);
  const result = await writeIndexAndTrailer(input.segments, fields, sink);
  if (options.close === true) await sink.close();
  return result;
}

/** The compacted index of `segments` (padded) and the trailer, after the data (§13 steps 2-5). */
async function writeIndexAndTrailer(segments: readonly Segment[], fields: ReturnType<typeof headerFields>, sink: ByteSink): Promise<CommitResult> {
  const { entries, dataSectors } = compactIndex(segments);
  const padded = entries.length % INDEX_ALIGN_ENTRIES === 0 ? entries.length : entries.length + INDEX_ALIGN_ENTRIES - (entries.length % INDEX_ALIGN_ENTRIES);
  const indexOffset = (HEADER_TRAILER_SIZE / SECTOR + dataSectors) * SECTOR;
  for (let i = 0; i < padded; i += INDEX_WRITE_ENTRIES) {
    const part = entries.slice(i, Math.min(i + INDEX_WRITE_ENTRIES, entries.length));
    await sink.write(encodeSegments(part, Math.min(INDEX_WRITE_ENTRIES, padded - i)));
  }
  await sink.write(encodeHeaderTrailer(newHeaderTrailer({ ...fields, flags: FLAG_DATA | FLAG_SEALED, indexOffset, indexSize: padded })));
  return { indexOffset, indexSize: padded };
}

/** Options of {@link commitWritableLayer} and {@link commitSealedLayer}. */
export interface CommitLayerOptions extends CommitOptions {
  /** `--uuid`: ignored unless a valid UUID (then the blob's UUID is nil). */
  uuid?: string;
  /** `--parent-uuid`: replaces the source header's parent when a valid UUID. */
  parentUuid?: string;
  /** `-m`. */
  userTag?: string | Uint8Array;
}

/**
 * Commits a stand-alone writable layer (`overlaybd-commit DATA INDEX OUT`): its index in
 * offset order, data from its data file, `virtual_size` and `parent_uuid` from the data
 * file's header **on disk** (§13 step 1: in-memory growth from writes is not reflected).
 * A layer stacked on RO layers must not be committed this way (the caller checks).
 */
export async function commitWritableLayer(
  layer: Pick<WritableLayer, 'segments' | 'data'>,
  sink: ByteSink,
  options: CommitLayerOptions = {},
): Promise<CommitResult> {
  return commitFromSource(layer.segments(), layer.data, { sink, options });
}

/**
 * Commits a sealed blob again (`overlaybd-commit --commit_sealed`): its segments, data
 * from its (decoded) blob, `virtual_size` and `parent_uuid` from the blob's header.
 */
export async function commitSealedLayer(
  layer: Pick<ReadOnlyLayer, 'segments' | 'blob'>,
  sink: ByteSink,
  options: CommitLayerOptions = {},
): Promise<CommitResult> {
  return commitFromSource(layer.segments, layer.blob, { sink, options });
}

async function commitFromSource(
  segments: readonly Segment[],
  source: BlobReader,
  target: { sink: ByteSink; options: CommitLayerOptions },
): Promise<CommitResult> {
  const header = await readSourceHeader(source);
  const { options } = target;
  const parentUuid = options.parentUuid === undefined ? undefined : parseUuid(options.parentUuid);
  return commitLayer(
    {
      segments: segments.map((s) => ({ ...s, tag: 0 })),
      sources: [source],
      header: {
        virtualSize: header.virtualSize,
        parentUuid: parentUuid ?? header.parentUuid,
        ...(options.uuid === undefined ? {} : { uuid: options.uuid }),
        ...(options.userTag === undefined ? {} : { userTag: options.userTag }),
      },
    },
    target.sink,
    options.close === undefined ? {} : { close: options.close },
  );
}

/** Decodes the header at offset 0 of a source file. */
export async function readSourceHeader(source: BlobReader): Promise<HeaderTrailer> {
  const bytes = new Uint8Array(HEADER_TRAILER_SIZE);
  await readFully(source, bytes, 0, 'LSMT source header');
  return decodeHeaderTrailer(bytes, 'LSMT source header');
}

function headerFields(h: CommitHeader): Pick<HeaderTrailer, 'virtualSize' | 'uuid' | 'parentUuid' | 'userTag'> {
  const userTag = typeof h.userTag === 'string' ? new TextEncoder().encode(h.userTag) : (h.userTag ?? new Uint8Array(0));
  if (userTag.length > 256) {
    throw new InvalidArgumentError(`Cannot commit layer: commit message is ${userTag.length} bytes, more than 256`);
  }
  if (!Number.isSafeInteger(h.virtualSize) || h.virtualSize < 0) {
    throw new InvalidArgumentError(`Cannot commit layer: virtual size ${h.virtualSize} is not a non-negative integer`);
  }
  return {
    virtualSize: h.virtualSize,
    uuid: (h.uuid === undefined ? undefined : parseUuid(h.uuid)) ?? NIL_UUID,
    parentUuid: (h.parentUuid === undefined ? undefined : parseUuid(h.parentUuid)) ?? NIL_UUID,
    userTag,
  };
}

function checkSegments(input: CommitInput): void {
  let prevEnd = 0;
  input.segments.forEach((s, i) => {
    if (!(s.length > 0 && s.length <= MAX_SEGMENT_LENGTH && s.offset >= prevEnd)) {
      throw new InvalidArgumentError(
        `Cannot commit layer: segment ${i} (offset ${s.offset}, length ${s.length}) is empty, too long or out of order`,
      );
    }
    if (!s.zeroed && input.sources[s.tag] === undefined) {
      throw new InvalidArgumentError(`Cannot commit layer: segment ${i} has tag ${s.tag} but there are ${input.sources.length} sources`);
    }
    prevEnd = s.offset + s.length;
  });
}

/**
 * Appends `e` to `out`, merging it into the last entry when §13 step 3 allows: contiguous
 * in logical and mapped space (a zeroed entry's map end is its `moffset`), same `zeroed`
 * and `tag`, and a combined length strictly below 16383.
 */
function pushCoalesced(out: Segment[], e: Segment): void {
  const prev = out[out.length - 1];
  if (
    prev !== undefined &&
    prev.offset + prev.length === e.offset &&
    (prev.zeroed ? prev.moffset : prev.moffset + prev.length) === e.moffset &&
    prev.zeroed === e.zeroed &&
    prev.tag === e.tag &&
    prev.length + e.length < MAX_SEGMENT_LENGTH
  ) {
    prev.length += e.length;
  } else {
    out.push({ ...e });
  }
}

/** The coalescing pass of lsmt.md §13 step 3 over a produced entry list. */
export function coalesceSegments(entries: readonly Segment[]): Segment[] {
  const out: Segment[] = [];
  for (const e of entries) pushCoalesced(out, e);
  return out;
}

/**
 * The compacted index (§13 steps 2-3): every data segment cut into 64-sector pieces laid
 * out from sector 8, zeroed segments pointing at the cursor, coalesced in one pass.
 * Returns the entries (before padding) and the number of data sectors.
 */
export function compactIndex(segments: readonly Segment[]): { entries: Segment[]; dataSectors: number } {
  const out: Segment[] = [];
  let cursor = HEADER_TRAILER_SIZE / SECTOR;
  for (const s of segments) {
    if (s.zeroed) {
      pushCoalesced(out, { offset: s.offset, length: s.length, moffset: cursor, zeroed: true, tag: s.tag });
      continue;
    }
    for (let done = 0; done < s.length; done += COMMIT_PIECE_SECTORS) {
      const n = Math.min(COMMIT_PIECE_SECTORS, s.length - done);
      pushCoalesced(out, { offset: s.offset + done, length: n, moffset: cursor, zeroed: false, tag: s.tag });
      cursor += n;
    }
  }
  return { entries: out, dataSectors: cursor - HEADER_TRAILER_SIZE / SECTOR };
}

/** One read of a chunk: `length` bytes of source `tag` at `source`, to `target` in the chunk. */
interface Run {
  tag: number;
  source: number;
  length: number;
  target: number;
}

interface Chunk {
  size: number;
  runs: Run[];
}

/** Groups the data of `segments` into chunks of at most {@link CHUNK_BYTES}. */
function* planChunks(segments: readonly Segment[]): Generator<Chunk> {
  let chunk: Chunk = { size: 0, runs: [] };
  for (const s of segments) {
    if (s.zeroed) continue;
    let source = s.moffset * SECTOR;
    let left = s.length * SECTOR;
    while (left > 0) {
      const take = Math.min(left, CHUNK_BYTES - chunk.size);
      const last = chunk.runs[chunk.runs.length - 1];
      if (last !== undefined && last.tag === s.tag && last.source + last.length === source) last.length += take;
      else chunk.runs.push({ tag: s.tag, source, length: take, target: chunk.size });
      chunk.size += take;
      source += take;
      left -= take;
      if (chunk.size === CHUNK_BYTES) {
        yield chunk;
        chunk = { size: 0, runs: [] };
      }
    }
  }
  if (chunk.size > 0) yield chunk;
}

async function readChunk(chunk: Chunk, sources: readonly BlobReader[], into: Uint8Array): Promise<Uint8Array> {
  const buf = into.subarray(0, chunk.size);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < chunk.runs.length) {
      const run = chunk.runs[next++] as Run;
      const what = `LSMT commit source ${run.tag}`;
      await readFully(sources[run.tag] as BlobReader, buf.subarray(run.target, run.target + run.length), run.source, what);
    }
  };
  await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, chunk.runs.length) }, worker));
  return buf;
}

/**
 * The two chunk buffers of the last commit, for the next one: on the VMs this runs on,
 * first-touch page faults cost ~4 ms per fresh MiB. (A failed commit, whose read may
 * still be in flight, leaves its buffers to the collector.)
 */
const spareChunks: Uint8Array[] = [];

/**
 * Copies the data of every data segment, in order, reading one chunk ahead into the
 * other of two buffers (a buffer is reused once the sink has taken its chunk).
 */
async function copyData(input: CommitInput, sink: ByteSink): Promise<void> {
  const plan = planChunks(input.segments);
  const buffers = [spareChunks.pop() ?? new Uint8Array(CHUNK_BYTES), spareChunks.pop() ?? new Uint8Array(CHUNK_BYTES)];
  let turn = 0;
  const start = (): Promise<Uint8Array> | undefined => {
    const r = plan.next();
    if (r.done === true) return undefined;
    const p = readChunk(r.value, input.sources, buffers[turn++ % 2] as Uint8Array);
    p.catch(() => {}); // awaited below; avoids an unhandled rejection while the sink writes
    return p;
  };
  let pending = start();
  while (pending !== undefined) {
    const buf = await pending;
    pending = start();
    await sink.write(buf);
  }
  if (spareChunks.length === 0) spareChunks.push(...buffers);
}
