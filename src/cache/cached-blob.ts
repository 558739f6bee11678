/**
 * One blob in the block cache: its sparse cache file (`<cacheDir>/<digest>`, blob byte x
 * at file byte x, as upstream's `file` cache), its presence journal
 * (`<cacheDir>/<digest>.units`, `unit-journal.ts`), the in-memory set of present refill
 * units, and the fills in flight. Shared by every `CachedBlobReader` of the digest in
 * this process (the owning `BlockCache` reference-counts it).
 *
 * Ordering that keeps the journal honest (it must never claim bytes the file lacks):
 *
 * 1. fill: write the unit bytes into the cache file, mark them present in memory;
 * 2. commit (batched, one at a time): `fdatasync` the cache file, then append a PRESENT
 *    record for the units written before that sync;
 * 3. evict: append an ABSENT record, `fdatasync` the journal, then punch the hole.
 *
 * A process crash loses at most the journal's unsynced tail (PRESENT records of data
 * that is nonetheless in the file); a power loss additionally loses unsynced data, but
 * its PRESENT record was never written. With `sync: false` steps 2–3 skip the syncs:
 * still safe against process crashes (the page cache survives), not against power loss.
 *
 * Concurrency: every unit has at most one operation in flight (a fill or an eviction),
 * found in `#inflight`; readers that need a unit being filled wait for that fill and copy
 * from its buffer, so each unit is fetched once. Journal appends, syncs, punches and
 * compactions run one after another on `#queue`. An eviction bumps `#generation` right
 * before it clears and punches, and a read that copied from the cache file while the
 * generation changed starts over.
 */
import { constants } from 'node:fs';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { channel } from 'node:diagnostics_channel';
import { debuglog } from 'node:util';
import type { BlobReader } from '../io/blob-reader.ts';
import { clampRead } from '../io/blob-reader.ts';
import { DataCorruptionError, FailedPreconditionError } from '../io/errors.ts';
import { native } from '../native/index.ts';
import { UnitBitmap } from './unit-bitmap.ts';
import {
  encodeJournalHeader,
  encodeJournalRuns,
  JOURNAL_HEADER_SIZE,
  JOURNAL_RECORD_SIZE,
  OP_ABSENT,
  OP_PRESENT,
  replayJournal,
  unitCount,
} from './unit-journal.ts';

const debug = debuglog('obd');
const fillChannel = channel('obd:cache:fill');
const evictChannel = channel('obd:cache:evict');

/** Reads that keep colliding with evictions give up on the cache after this many rounds. */
const MAX_READ_ROUNDS = 8;
const EOPNOTSUPP = 95;

/** What a blob needs from the cache that owns it (space accounting and LRU). */
export interface BlobOwner {
  /** Claims space for `bytes` new present bytes; false when the cache is full. */
  reserve(bytes: number): Promise<boolean>;
  /** Returns space of bytes no longer present. */
  release(bytes: number): void;
  /** Records an access for LRU. */
  touch(): void;
}

/** Per-reader counters, updated by {@link CachedBlob.read}. */
export interface CacheReadStats {
  /** Bytes served from the cache file. */
  hitBytes: number;
  /** Bytes served from a fill (this reader's or another one's in flight). */
  missBytes: number;
  /** `readAt` calls this reader made on its source. */
  sourceReads: number;
  /** Bytes this reader fetched from its source. */
  sourceBytes: number;
  /** Fetched bytes that were not stored because the cache was full or the write failed. */
  bypassedBytes: number;
}

/** Zeroed counters. */
export function newCacheReadStats(): CacheReadStats {
  return { hitBytes: 0, missBytes: 0, sourceReads: 0, sourceBytes: 0, bypassedBytes: 0 };
}

/** Options of {@link CachedBlob.open}. */
export interface CachedBlobOptions {
  dataPath: string;
  journalPath: string;
  digest: string;
  size: number;
  unitSize: number;
  /** fdatasync before journal records (see the file comment). */
  sync: boolean;
  /** Largest single source read; longer missing runs are split. */
  maxFetchBytes: number;
  /** Compact the journal once it holds this many records and twice the needed ones. */
  compactAfterRecords: number;
  owner: BlobOwner;
}

/** Who is reading: the source to fill from and the counters to update. */
export interface ReadContext {
  source: BlobReader;
  stats: CacheReadStats;
}

interface FillOp {
  kind: 'fill';
  first: number;
  last: number;
  start: number;
  end: number;
  bytes: Promise<Uint8Array>;
}

interface EvictOp {
  kind: 'evict';
  done: Promise<void>;
}

type UnitOp = FillOp | EvictOp;

async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

async function readAll(fh: FileHandle, buf: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await fh.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Present bytes of a set of units of a blob (the last unit may be short). */
export function presentBytes(present: UnitBitmap, unitSize: number, blobSize: number): number {
  let bytes = present.count * unitSize;
  const last = present.length - 1;
  if (last >= 0 && present.has(last)) bytes -= last * unitSize + unitSize - blobSize;
  return bytes;
}

/** Present bytes recorded by a journal file, or `undefined` when it is unreadable. */
export async function journalPresentBytes(journalPath: string): Promise<number | undefined> {
  try {
    const fh = await open(journalPath, 'r');
    try {
      const r = replayJournal(await fh.readFile());
      return presentBytes(r.present, r.header.unitSize, r.header.blobSize);
    } finally {
      await fh.close();
    }
  } catch {
    return undefined;
  }
}

/** See the file comment. Obtain through `BlockCache`. */
export class CachedBlob {
  readonly digest: string;
  readonly size: number;
  readonly unitSize: number;
  readonly dataPath: string;
  readonly journalPath: string;
  #o: CachedBlobOptions;
  #data: FileHandle;
  #journal: FileHandle | undefined;
  #journalLength: number;
  #journalRecords: number;
  #present: UnitBitmap;
  /** Units written to the cache file whose PRESENT record is not yet appended. */
  #pending = new Set<number>();
  #inflight = new Map<number, UnitOp>();
  #generation = 0;
  #queue: Promise<void> = Promise.resolve();
  #commitQueued = false;
  #closing = false;
  #closed: Promise<void> | undefined;

  private constructor(o: CachedBlobOptions, init: { data: FileHandle; journal: FileHandle; journalLength: number; records: number; present: UnitBitmap }) {
    this.#o = o;
    this.digest = o.digest;
    this.size = o.size;
    this.unitSize = o.unitSize;
    this.dataPath = o.dataPath;
    this.journalPath = o.journalPath;
    this.#data = init.data;
    this.#journal = init.journal;
    this.#journalLength = init.journalLength;
    this.#journalRecords = init.records;
    this.#present = init.present;
  }

  /**
   * Opens (creating when missing) the cache file and journal of a blob. A journal that is
   * unreadable or was written for another blob size or refill unit is discarded together
   * with the cached bytes.
   */
  static async open(o: CachedBlobOptions): Promise<CachedBlob> {
    const header = { unitSize: o.unitSize, blobSize: o.size };
    const units = unitCount(header);
    const flags = constants.O_RDWR | constants.O_CREAT;
    const data = await open(o.dataPath, flags, 0o644);
    let journal: FileHandle | undefined;
    try {
      journal = await open(o.journalPath, flags, 0o644);
      const bytes = await journal.readFile();
      let present: UnitBitmap | undefined;
      let journalLength = 0;
      let records = 0;
      try {
        const r = replayJournal(bytes);
        if (r.header.unitSize === o.unitSize && r.header.blobSize === o.size) {
          present = r.present;
          journalLength = r.validLength;
          records = r.records;
        } else {
          debug('cache: discarding %s: cached as %d bytes in units of %d', o.digest, r.header.blobSize, r.header.unitSize);
        }
      } catch (e) {
        if (bytes.length > 0) debug('cache: discarding journal of %s: %s', o.digest, (e as Error).message);
      }
      if (present === undefined) {
        // Empty record first, then drop the bytes it no longer claims.
        await journal.truncate(0);
        await writeAll(journal, encodeJournalHeader(header), 0);
        if (o.sync) await journal.datasync();
        await data.truncate(0);
        present = new UnitBitmap(units);
        journalLength = JOURNAL_HEADER_SIZE;
      } else if (journalLength < bytes.length) {
        await journal.truncate(journalLength);
      }
      if ((await data.stat()).size !== o.size) await data.truncate(o.size);
      const blob = new CachedBlob(o, { data, journal, journalLength, records, present });
      void blob.#enqueue(() => blob.#maybeCompact()).catch(() => undefined);
      return blob;
    } catch (e) {
      await journal?.close().catch(() => undefined);
      await data.close().catch(() => undefined);
      throw e;
    }
  }

  /** Bytes of this blob present in the cache file. */
  get presentBytes(): number {
    return presentBytes(this.#present, this.unitSize, this.size);
  }

  /** Number of journal records (for tests and compaction diagnostics). */
  get journalRecords(): number {
    return this.#journalRecords;
  }

  /** True when every byte of `[offset, offset+length)` (clipped to the blob) is cached. */
  isCached(offset: number, length: number): boolean {
    const n = clampRead(this.size, offset, length);
    if (n === 0) return true;
    const first = Math.floor(offset / this.unitSize);
    const last = Math.floor((offset + n - 1) / this.unitSize);
    for (let u = first; u <= last; u++) {
      if (!this.#present.has(u) || this.#inflight.get(u)?.kind === 'evict') return false;
    }
    return true;
  }

  /**
   * Fills `buf` from `offset` like `BlobReader.readAt`: present units come from the cache
   * file, units being filled from their fill, and missing runs are fetched from
   * `ctx.source` (one read per maximal run, at most `maxFetchBytes` each) and stored.
   */
  async read(buf: Uint8Array, offset: number, ctx: ReadContext): Promise<number> {
    if (!Number.isSafeInteger(offset) || offset < 0) throw new RangeError(`Cannot read cached blob ${this.digest} at offset ${offset}`);
    const n = clampRead(this.size, offset, buf.length);
    if (n === 0) return 0;
    this.#o.owner.touch();
    for (let round = 0; round < MAX_READ_ROUNDS; round++) {
      if (this.#closing) throw new FailedPreconditionError(`Cannot read cached blob ${this.digest}: cache entry is closed`);
      if (await this.#readRound(buf.subarray(0, n), offset, ctx)) return n;
    }
    // Evictions kept racing this read: serve it from the source without the cache.
    await this.#fetch(ctx, buf.subarray(0, n), offset);
    ctx.stats.missBytes += n;
    return n;
  }

  /** One attempt of {@link read}; false when it must start over. */
  async #readRound(buf: Uint8Array, offset: number, ctx: ReadContext): Promise<boolean> {
    const end = offset + buf.length;
    const unit = this.unitSize;
    const last = Math.floor((end - 1) / unit);
    const generation = this.#generation;
    const dst = { buf, offset };
    // Served bytes are counted only for the round that completes.
    const served = { hit: 0, miss: 0 };
    const tasks: Array<Promise<boolean>> = [];
    let fromFile = false;
    let u = Math.floor(offset / unit);
    while (u <= last) {
      const op = this.#inflight.get(u);
      if (op?.kind === 'evict') {
        tasks.push(op.done.then(() => false));
        u++;
        continue;
      }
      if (op !== undefined) {
        tasks.push(this.#copyFromFill(op, dst, served));
        u = op.last + 1;
        continue;
      }
      let v = u;
      if (this.#present.has(u)) {
        while (v < last && this.#present.has(v + 1) && !this.#inflight.has(v + 1)) v++;
        const b = Math.max(offset, u * unit);
        const e = Math.min(end, (v + 1) * unit);
        fromFile = true;
        tasks.push(this.#readFile(buf.subarray(b - offset, e - offset), b, served));
      } else {
        const maxUnits = Math.max(1, Math.floor(this.#o.maxFetchBytes / unit));
        while (v < last && v - u + 1 < maxUnits && !this.#present.has(v + 1) && !this.#inflight.has(v + 1)) v++;
        tasks.push(this.#copyFromFill(this.#startFill(u, v, ctx), dst, served));
      }
      u = v + 1;
    }
    const results = await Promise.allSettled(tasks);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    const complete = results.every((r) => r.status === 'fulfilled' && r.value) && (!fromFile || this.#generation === generation);
    if (complete) {
      ctx.stats.hitBytes += served.hit;
      ctx.stats.missBytes += served.miss;
    }
    return complete;
  }

  async #readFile(dst: Uint8Array, position: number, served: { hit: number }): Promise<boolean> {
    const got = await readAll(this.#data, dst, position);
    if (got !== dst.length) {
      throw new DataCorruptionError(`Cannot read cache file ${this.dataPath} at offset ${position}: file ends after ${got} of ${dst.length} bytes`);
    }
    served.hit += dst.length;
    return true;
  }

  async #copyFromFill(op: FillOp, dst: { buf: Uint8Array; offset: number }, served: { miss: number }): Promise<boolean> {
    const { buf, offset } = dst;
    const bytes = await op.bytes;
    const b = Math.max(offset, op.start);
    const e = Math.min(offset + buf.length, op.end);
    if (e > b) {
      buf.set(bytes.subarray(b - op.start, e - op.start), b - offset);
      served.miss += e - b;
    }
    return true;
  }

  async #fetch(ctx: ReadContext, data: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < data.length) {
      ctx.stats.sourceReads++;
      const got = await ctx.source.readAt(data.subarray(done), offset + done);
      if (got <= 0) {
        throw new DataCorruptionError(
          `Cannot fill cache of ${this.digest} at offset ${offset + done}: source ended there, blob size ${this.size}`,
        );
      }
      done += got;
      ctx.stats.sourceBytes += got;
    }
  }

  #startFill(first: number, last: number, ctx: ReadContext): FillOp {
    const start = first * this.unitSize;
    const end = Math.min(this.size, (last + 1) * this.unitSize);
    const op: FillOp = { kind: 'fill', first, last, start, end, bytes: Promise.resolve(new Uint8Array(0)) };
    op.bytes = (async () => {
      const data = new Uint8Array(end - start);
      await this.#fetch(ctx, data, start);
      await this.#store(op, data, ctx);
      return data;
    })();
    for (let u = first; u <= last; u++) this.#inflight.set(u, op);
    const done = (): void => {
      for (let u = first; u <= last; u++) if (this.#inflight.get(u) === op) this.#inflight.delete(u);
    };
    op.bytes.then(done, done);
    if (fillChannel.hasSubscribers) fillChannel.publish({ digest: this.digest, offset: start, length: end - start });
    return op;
  }

  /** Writes a fetched run into the cache file; never throws (the read is served anyway). */
  async #store(op: FillOp, data: Uint8Array, ctx: ReadContext): Promise<void> {
    const count = op.last - op.first + 1;
    const owner = this.#o.owner;
    let reserved = false;
    try {
      reserved = await owner.reserve(data.length);
      if (!reserved) {
        ctx.stats.bypassedBytes += data.length;
        return;
      }
      await writeAll(this.#data, data, op.start);
    } catch (e) {
      debug('cache: not storing %s [%d, %d): %s', this.digest, op.start, op.end, (e as Error).message);
      if (reserved) owner.release(data.length);
      ctx.stats.bypassedBytes += data.length;
      return;
    }
    this.#present.set(op.first, count);
    for (let u = op.first; u <= op.last; u++) this.#pending.add(u);
    this.#scheduleCommit();
  }

  /**
   * Drops every unit overlapping `[offset, offset+length)` from the cache: waits for fills
   * of those units, records them absent (durably) and punches the hole, so the next read
   * fetches them again.
   */
  async evict(offset: number, length: number): Promise<void> {
    const n = clampRead(this.size, offset, length);
    if (n === 0 || offset < 0) return;
    const first = Math.floor(offset / this.unitSize);
    const last = Math.floor((offset + n - 1) / this.unitSize);
    let finish = (): void => undefined;
    const op: EvictOp = { kind: 'evict', done: new Promise<void>((resolve) => (finish = resolve)) };
    const before = new Set<Promise<unknown>>();
    for (let u = first; u <= last; u++) {
      const prev = this.#inflight.get(u);
      if (prev !== undefined) before.add(prev.kind === 'fill' ? prev.bytes : prev.done);
      this.#inflight.set(u, op);
    }
    try {
      await Promise.allSettled(before);
      await this.#enqueue(() => this.#evictUnits(first, last));
    } finally {
      for (let u = first; u <= last; u++) if (this.#inflight.get(u) === op) this.#inflight.delete(u);
      finish();
    }
  }

  async #evictUnits(first: number, last: number): Promise<void> {
    this.#generation++;
    const before = this.presentBytes;
    const removed = this.#present.clear(first, last - first + 1);
    for (let u = first; u <= last; u++) this.#pending.delete(u);
    if (removed === 0) return;
    const freed = before - this.presentBytes;
    this.#o.owner.release(freed);
    if (this.#journal !== undefined) {
      try {
        await this.#append(encodeJournalRuns(OP_ABSENT, [[first, last - first + 1]]));
        if (this.#o.sync && this.#journal !== undefined) await this.#journal.datasync();
      } catch (e) {
        // The ABSENT record may not be durable: keep the bytes on disk that it would cover.
        debug('cache: not punching %s units %d..%d: %s', this.digest, first, last, (e as Error).message);
        return;
      }
    }
    const start = first * this.unitSize;
    const r = native.punchHole(this.#data.fd, start, Math.min(this.size, (last + 1) * this.unitSize) - start);
    if (r < 0 && r !== -EOPNOTSUPP) debug('cache: punching %s [%d, +%d) failed: errno %d', this.digest, start, freed, -r);
    if (evictChannel.hasSubscribers) evictChannel.publish({ digest: this.digest, offset: start, length: freed });
  }

  /** Waits until every stored unit is recorded in the journal. */
  async flush(): Promise<void> {
    this.#scheduleCommit();
    await this.#queue;
  }

  /** Waits for fills and evictions, records everything, closes the files. Idempotent. */
  close(): Promise<void> {
    this.#closed ??= this.#close();
    return this.#closed;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    for (let i = 0; i < 1000 && this.#inflight.size > 0; i++) {
      const ops = new Set<Promise<unknown>>([...this.#inflight.values()].map((op) => (op.kind === 'fill' ? op.bytes : op.done)));
      await Promise.allSettled(ops);
    }
    await this.flush();
    const journal = this.#journal;
    this.#journal = undefined;
    await journal?.close().catch(() => undefined);
    await this.#data.close().catch(() => undefined);
  }

  #enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.#queue.then(task);
    this.#queue = run.catch((e: unknown) => debug('cache: journal task of %s failed: %s', this.digest, (e as Error).message));
    return run;
  }

  #scheduleCommit(): void {
    if (this.#commitQueued || this.#pending.size === 0) return;
    this.#commitQueued = true;
    void this.#enqueue(() => this.#commit());
  }

  async #commit(): Promise<void> {
    this.#commitQueued = false;
    if (this.#pending.size === 0) return;
    const units = [...this.#pending].sort((a, b) => a - b);
    this.#pending.clear();
    if (this.#journal === undefined) return;
    if (this.#o.sync) {
      try {
        await this.#data.datasync();
      } catch (e) {
        // The bytes may not be durable: do not record them (they stay usable in memory).
        debug('cache: fdatasync of %s failed, units stay unrecorded: %s', this.dataPath, (e as Error).message);
        return;
      }
    }
    const runs: Array<[number, number]> = [];
    for (const u of units) {
      if (!this.#present.has(u)) continue;
      const lastRun = runs[runs.length - 1];
      if (lastRun !== undefined && lastRun[0] + lastRun[1] === u) lastRun[1]++;
      else runs.push([u, 1]);
    }
    if (runs.length > 0) await this.#append(encodeJournalRuns(OP_PRESENT, runs));
    await this.#maybeCompact();
  }

  /**
   * Appends records at the known end of the journal. On failure the journal is cut back
   * to its last good length; when even that fails it is deleted (the next start-up then
   * discards the orphaned cache file) and nothing more is recorded for this blob.
   */
  async #append(bytes: Uint8Array): Promise<void> {
    const journal = this.#journal;
    if (journal === undefined) return;
    try {
      await writeAll(journal, bytes, this.#journalLength);
      this.#journalLength += bytes.length;
      this.#journalRecords += bytes.length / JOURNAL_RECORD_SIZE;
    } catch (e) {
      debug('cache: appending to %s failed: %s', this.journalPath, (e as Error).message);
      try {
        await journal.truncate(this.#journalLength);
      } catch {
        this.#journal = undefined;
        await journal.close().catch(() => undefined);
        await rm(this.journalPath, { force: true }).catch(() => undefined);
      }
      throw e;
    }
  }

  /** Rewrites the journal as one PRESENT record per run of durable units when it has grown. */
  async #maybeCompact(): Promise<void> {
    const old = this.#journal;
    if (old === undefined || this.#journalRecords < this.#o.compactAfterRecords) return;
    const durable = this.#present.clone();
    for (const u of this.#pending) durable.clear(u, 1);
    const runs = [...durable.runs()];
    if (this.#journalRecords <= 2 * runs.length) return;
    const tmp = `${this.journalPath}.tmp`;
    const fh = await open(tmp, 'w', 0o644);
    try {
      const header = encodeJournalHeader({ unitSize: this.unitSize, blobSize: this.size });
      const body = encodeJournalRuns(OP_PRESENT, runs);
      await writeAll(fh, header, 0);
      await writeAll(fh, body, header.length);
      await fh.datasync();
      await rename(tmp, this.journalPath);
      await syncDirectory(dirname(this.journalPath)).catch(() => undefined);
      this.#journal = fh;
      this.#journalLength = header.length + body.length;
      this.#journalRecords = runs.length;
      await old.close().catch(() => undefined);
    } catch (e) {
      await fh.close().catch(() => undefined);
      await rm(tmp, { force: true }).catch(() => undefined);
      throw e;
    }
  }
}
