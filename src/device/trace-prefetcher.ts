/**
 * Trace-based prefetch (runtime.md §8.1–8.2): records which ranges of the lower layers a
 * device reads, and replays such a trace after a later open so that the data is pulled
 * into the cache before the workload asks for it.
 *
 * Offsets refer to the decoded layer files (the LSMT blobs after tar and ZFile decoding):
 * {@link TracePrefetcher.wrap} goes around the reader `openLayerBlob()` returns, below the
 * LSMT layer. The prefetcher lives as long as the wrapped readers: the first one closed
 * (the device closing) stops recording (and writes the trace) or replay.
 *
 * Record protocol: `<trace>.lock` is created exclusively at start; deleting it (polled
 * every second) or closing the device writes the trace, removes the lock and creates an
 * empty `<trace>.ok`. Replay: the read records of each layer are merged into ranges
 * (overlapping or at most `mergeGap` apart, {@link replayRanges}), taken in the order of
 * their first record by `concurrency` workers, each range read in pieces of at most
 * {@link REPLAY_PIECE} (errors ignored) until done or closed; it never delays the device
 * open.
 *
 * Dynamic file-list prefetch (§8.3, a non-trace file) is not implemented: such a file
 * leaves prefetch disabled.
 *
 * @example
 * ```ts
 * const pf = await TracePrefetcher.forConfig(cfg); // undefined when prefetch is off
 * const reader = pf ? pf.wrap(decoded, layerIndex) : decoded;
 * // … open the stack on the wrapped readers, then:
 * pf?.start();
 * ```
 */
import { open, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { debuglog } from 'node:util';
import type { BlobReader, Evictable } from '../io/blob-reader.ts';
import { isEvictable, isPrefetchable } from '../io/blob-reader.ts';
import { InvalidArgumentError } from '../io/errors.ts';
import type { DeviceConfig } from '../image/device-config.ts';
import { decodeTrace, encodeTrace, hasTraceMagic, type TraceRecord } from './trace-file.ts';

const log = debuglog('obd');

/**
 * Largest read (decoded bytes) a replay worker issues; upstream's buffer is 1 MiB. Each
 * piece is one registry request, and a request costs the registry more than its bytes
 * (Debian's docker-registry allocates and zeroes a 4 MiB read buffer per blob request:
 * in bench/cold-start it spent more CPU than the device serving the reads). 4 MiB
 * pieces: 38 requests instead of 51 for the same 13.3 MB, the (b) phase 1.67-1.93 s
 * (median 1.68) against 1.68-2.02 s (median 1.80), 5 alternating runs each.
 */
export const REPLAY_PIECE = 4 << 20;
/**
 * Default number of replay workers (`prefetchConfig.concurrency`; upstream's default is
 * 16). Replay reads the trace in order; with 16 pieces of up to 1 MiB in flight, a
 * bandwidth-bound link shares itself among all of them, so the first ranges the
 * workload needs arrive as late as the sixteenth. Four in flight still fill a
 * 200 Mbit/s link at 10 ms RTT (~0.5 MB in flight) and deliver in trace order.
 * bench/cold-start, 8 alternating runs each: run phase 2.04 s mean with 16 workers,
 * 1.83 s with 4 (and 6 beat 16 in another 8).
 */
export const DEFAULT_REPLAY_CONCURRENCY = 4;
/**
 * Default largest gap (decoded bytes) between two traced ranges of a layer that replay
 * reads as one range. A workload reads a file in kernel-sized pieces (each a record);
 * read one by one, each of them costs a registry round trip once the refill unit is small
 * ({@link REPLAY_REFILL_SIZE}). A request costs more than its round trip: the registry,
 * any proxy and this process spend CPU on each, and a container start is CPU-bound on a
 * small machine. bench/cold-start (Python start, 14 MB traced): 64 KiB → 1 MiB took the
 * replay from ~65 to ~48 requests and the run from 1.71–2.05 s to 1.63–1.69 s; at
 * 200 Mbit/s, 1 MiB of unneeded data costs 40 ms.
 */
export const DEFAULT_REPLAY_MERGE_GAP = 1 << 20;

export interface TracePrefetcherOptions {
  /** Replay workers; default 16. */
  concurrency?: number;
  /** Lock file poll interval in ms while recording; default 1000. */
  pollMs?: number;
  /** Largest gap in bytes between traced ranges of a layer replayed as one; default {@link DEFAULT_REPLAY_MERGE_GAP}. */
  mergeGap?: number;
}

/** A range replay reads: traced ranges of one layer merged, in the order of their first record. */
interface ReplayRange {
  layerIndex: number;
  offset: number;
  count: number;
}

/**
 * Merges the read records per layer: ranges that overlap or lie at most `gap` bytes
 * apart become one; the merged ranges keep the order of their earliest record.
 */
export function replayRanges(records: readonly TraceRecord[], gap: number): ReplayRange[] {
  const byLayer = new Map<number, Array<{ first: number; offset: number; end: number }>>();
  records.forEach((r, i) => {
    if (r.count <= 0) return;
    let l = byLayer.get(r.layerIndex);
    if (l === undefined) byLayer.set(r.layerIndex, (l = []));
    l.push({ first: i, offset: r.offset, end: r.offset + r.count });
  });
  const merged: Array<ReplayRange & { first: number }> = [];
  for (const [layerIndex, list] of byLayer) {
    list.sort((a, b) => a.offset - b.offset);
    let cur: (typeof list)[number] | undefined;
    for (const r of list) {
      if (cur !== undefined && r.offset <= cur.end + gap) {
        cur.end = Math.max(cur.end, r.end);
        cur.first = Math.min(cur.first, r.first);
        continue;
      }
      if (cur !== undefined) merged.push({ layerIndex, offset: cur.offset, count: cur.end - cur.offset, first: cur.first });
      cur = { ...r };
    }
    if (cur !== undefined) merged.push({ layerIndex, offset: cur.offset, count: cur.end - cur.offset, first: cur.first });
  }
  return merged.sort((a, b) => a.first - b.first).map(({ layerIndex, offset, count }) => ({ layerIndex, offset, count }));
}

/** What a replay did, once it ended (all records read, or the device closed). */
export interface ReplayStats {
  /** Read records of the trace. */
  records: number;
  /** Pieces (≤ {@link REPLAY_PIECE}) read successfully. */
  pieces: number;
  /** Bytes read successfully. */
  bytes: number;
  /** Pieces whose read failed (ignored). */
  errors: number;
  /** Whether the device closed before the replay finished. */
  stopped: boolean;
}

/** The trace file of `cfg`: the acceleration layer's `trace`, else `recordTracePath`; undefined when none. */
function tracePath(cfg: DeviceConfig): string | undefined {
  if (cfg.accelerationLayer) {
    const last = cfg.lowers.at(-1);
    return last === undefined || last.dir === '' ? undefined : join(last.dir, 'trace');
  }
  return cfg.recordTracePath !== '' ? cfg.recordTracePath : undefined;
}

async function fileSize(path: string): Promise<number | undefined> {
  const s = await stat(path).catch(() => undefined);
  return s?.isFile() === true ? s.size : undefined;
}

/** A layer reader that reports its reads (record mode) and its close to the prefetcher. */
class TracedReader implements BlobReader, Evictable {
  readonly #inner: BlobReader;
  readonly #onRead: ((count: number, offset: number) => void) | undefined;
  readonly #onClose: () => Promise<void>;

  constructor(inner: BlobReader, hooks: { onRead?: (count: number, offset: number) => void; onClose: () => Promise<void> }) {
    this.#inner = inner;
    this.#onRead = hooks.onRead;
    this.#onClose = hooks.onClose;
  }

  get size(): number {
    return this.#inner.size;
  }

  async readAt(buf: Uint8Array, offset: number): Promise<number> {
    const n = await this.#inner.readAt(buf, offset);
    if (n > 0) this.#onRead?.(n, offset);
    return n;
  }

  async evict(offset: number, length: number): Promise<void> {
    if (isEvictable(this.#inner)) await this.#inner.evict(offset, length);
  }

  async close(): Promise<void> {
    await this.#onClose();
    await this.#inner.close();
  }
}

/** Records or replays the reads of a device's lower layers (see the module comment). */
export class TracePrefetcher {
  /** `record`: appending reads to a new trace; `replay`: prefetching a recorded one. */
  readonly mode: 'record' | 'replay';
  /** The trace file. */
  readonly path: string;
  readonly #records: TraceRecord[];
  readonly #concurrency: number;
  readonly #pollMs: number;
  readonly #mergeGap: number;
  readonly #layers = new Map<number, BlobReader>();
  #recording = false;
  #stopped = false;
  #poll: NodeJS.Timeout | undefined;
  #finishing: Promise<void> | undefined;
  #replay: Promise<ReplayStats> | undefined;

  private constructor(init: { mode: 'record' | 'replay'; path: string; records: TraceRecord[]; options: TracePrefetcherOptions }) {
    this.mode = init.mode;
    this.path = init.path;
    this.#records = init.records;
    this.#concurrency = Math.max(1, init.options.concurrency ?? DEFAULT_REPLAY_CONCURRENCY);
    this.#pollMs = init.options.pollMs ?? 1000;
    this.#mergeGap = Math.max(0, init.options.mergeGap ?? DEFAULT_REPLAY_MERGE_GAP);
  }

  /**
   * The prefetcher `cfg` asks for (runtime.md §2.5 steps 1–3), or undefined when prefetch
   * is off. With `accelerationLayer` the trace is `<last lower dir>/trace`; the caller
   * drops that lower (see {@link dataLowers}). Record mode creates `<trace>.lock`; when it
   * already exists (another device records) recording is skipped.
   *
   * @throws InvalidArgumentError when both `accelerationLayer` and `recordTracePath` are set.
   * @throws DataCorruptionError when a file starting with the trace magic is not a valid trace.
   */
  static async forConfig(cfg: DeviceConfig, options: TracePrefetcherOptions = {}): Promise<TracePrefetcher | undefined> {
    if (cfg.accelerationLayer && cfg.recordTracePath !== '') {
      throw new InvalidArgumentError('Cannot open device: accelerationLayer and recordTracePath are both set');
    }
    const path = tracePath(cfg);
    if (path === undefined) return undefined;
    const size = await fileSize(path);
    if (size === undefined) return undefined;
    if (size === 0) {
      if (cfg.accelerationLayer) return undefined;
      try {
        await (await open(`${path}.lock`, 'wx')).close();
      } catch (e) {
        log('prefetch: not recording %s: cannot create %s.lock: %s', path, path, (e as Error).message);
        return undefined;
      }
      const pf = new TracePrefetcher({ mode: 'record', path, records: [], options });
      pf.#recording = true;
      log('prefetch: recording reads into %s', path);
      return pf;
    }
    const bytes = await readFile(path);
    if (!hasTraceMagic(bytes)) {
      log('prefetch: %s is not a trace; dynamic file-list prefetch is not supported', path);
      return undefined;
    }
    const records = decodeTrace(bytes, { name: path }).filter((r) => r.op === 'R');
    log('prefetch: replaying %d reads of %s', records.length, path);
    return new TracePrefetcher({ mode: 'replay', path, records, options });
  }

  /** The lowers of `cfg` that are data layers (all but the trace layer with `accelerationLayer`). */
  static dataLowers(cfg: DeviceConfig): DeviceConfig['lowers'] {
    return cfg.accelerationLayer ? cfg.lowers.slice(0, -1) : cfg.lowers;
  }

  /** Records read so far (record mode) or to replay (replay mode). */
  get records(): readonly TraceRecord[] {
    return this.#records;
  }

  /** Wraps the decoded reader of lower `layerIndex`; closing it ends recording or replay first. */
  wrap(reader: BlobReader, layerIndex: number): BlobReader {
    this.#layers.set(layerIndex, reader);
    const onClose = (): Promise<void> => this.#finish();
    if (this.mode === 'replay') return new TracedReader(reader, { onClose });
    return new TracedReader(reader, {
      onClose,
      onRead: (count, offset) => {
        if (this.#recording) this.#records.push({ op: 'R', layerIndex, count, offset });
      },
    });
  }

  /** Starts lock polling (record) or the replay workers (replay); returns at once. */
  start(): void {
    if (this.#stopped) return;
    if (this.mode === 'record') {
      this.#poll = setInterval(() => {
        void stat(`${this.path}.lock`).catch(() => {
          log('prefetch: %s.lock removed: writing the trace', this.path);
          void this.#finish();
        });
      }, this.#pollMs);
      this.#poll.unref();
    } else {
      this.#replay ??= this.#runReplay();
    }
  }

  /** Settles with the replay's figures once it ended; undefined before {@link start} or in record mode. */
  replayed(): Promise<ReplayStats> | undefined {
    return this.#replay;
  }

  /** Gives up after a failed device open: recording leaves no trace, only its lock removed. */
  async abort(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#poll);
    if (this.#recording) {
      this.#recording = false;
      this.#finishing = unlink(`${this.path}.lock`).catch(() => {});
    }
    await this.#finishing;
    await this.#replay;
  }

  #finish(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#poll);
    return (this.#finishing ??= (async () => {
      if (this.#recording) {
        this.#recording = false;
        await this.#writeTrace();
      }
      await this.#replay;
    })());
  }

  async #writeTrace(): Promise<void> {
    try {
      await writeFile(this.path, encodeTrace(this.#records));
      await unlink(`${this.path}.lock`).catch(() => {});
      await writeFile(`${this.path}.ok`, '');
      log('prefetch: wrote %d reads to %s', this.#records.length, this.path);
    } catch (e) {
      log('prefetch: cannot write trace %s: %s', this.path, (e as Error).message);
    }
  }

  async #runReplay(): Promise<ReplayStats> {
    const stats: ReplayStats = { records: this.#records.length, pieces: 0, bytes: 0, errors: 0, stopped: false };
    const ranges = replayRanges(this.#records, this.#mergeGap);
    let next = 0;
    let piece = 0;
    const worker = async (): Promise<void> => {
      let buf: Uint8Array | undefined;
      while (!this.#stopped) {
        const r = ranges[next];
        if (r === undefined) return;
        const offset = r.offset + piece * REPLAY_PIECE;
        const length = Math.min(REPLAY_PIECE, r.count - piece * REPLAY_PIECE);
        if (piece * REPLAY_PIECE + length >= r.count) {
          next++;
          piece = 0;
        } else {
          piece++;
        }
        const layer = this.#layers.get(r.layerIndex);
        if (layer === undefined || length <= 0 || offset < 0 || offset >= layer.size) continue;
        try {
          const want = Math.min(length, layer.size - offset);
          // A decoder fetches the stored blocks into the cache without decoding them.
          const n = isPrefetchable(layer) ? (await layer.prefetch(offset, want), want) : await layer.readAt((buf ??= new Uint8Array(REPLAY_PIECE)).subarray(0, want), offset);
          stats.pieces++;
          stats.bytes += n;
        } catch (e) {
          stats.errors++;
          log('prefetch: replay read of layer %d at %d failed: %s', r.layerIndex, offset, (e as Error).message);
        }
      }
    };
    // Let the caller finish opening before the first read.
    await new Promise((resolve) => setImmediate(resolve));
    await Promise.all(Array.from({ length: this.#concurrency }, worker));
    stats.stopped = this.#stopped;
    log('prefetch: replay of %s: %d pieces, %d bytes, %d errors%s', this.path, stats.pieces, stats.bytes, stats.errors, stats.stopped ? ' (stopped)' : '');
    return stats;
  }
}

/**
 * Refill unit of the remote readers of a device that replays a trace. The replay asks
 * for exactly the ranges the workload read (merged, {@link replayRanges}); in 256 KiB
 * units the ZFile blocks of its scattered ranges cost 2.4 times their size, and
 * sequential readahead past a range's end adds more (bench/cold-start's trace: 14.4 MB
 * of traced data, 23.4 MB fetched in 256 KiB units with readahead, 9.8 MB in 16 KiB
 * units without, in 63 requests instead of 46). On-demand reads of such a device are
 * mostly served by the replay.
 */
export const REPLAY_REFILL_SIZE = 16 << 10;

/**
 * Reader settings for the remote lowers of `cfg`: when the device will replay a trace
 * (an acceleration layer's or a `recordTracePath` that holds a trace) a refill of
 * {@link REPLAY_REFILL_SIZE} and no readahead; else none (the reader defaults).
 */
export async function replayReaderSettings(cfg: DeviceConfig): Promise<{ refillSize?: number; readaheadBytes?: number }> {
  const path = tracePath(cfg);
  if (path === undefined) return {};
  return ((await fileSize(path)) ?? 0) > 0 ? { refillSize: REPLAY_REFILL_SIZE, readaheadBytes: 0 } : {};
}

/**
 * The `download` settings to open the remote lowers of `cfg` with: the config's own, but
 * disabled while the device records a trace (runtime.md §2.5 step 3: `recordTracePath`
 * names an existing empty file), so the trace holds the workload's reads only.
 */
export async function downloadSettings(cfg: DeviceConfig): Promise<Record<string, unknown> | undefined> {
  if (cfg.accelerationLayer || cfg.recordTracePath === '') return cfg.download;
  return (await fileSize(cfg.recordTracePath)) === 0 ? { ...cfg.download, enable: false } : cfg.download;
}
