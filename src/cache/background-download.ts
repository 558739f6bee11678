/**
 * Background download of a device's remote layer blobs and switch to the local copies
 * (runtime.md §7, upstream `bk_download.cpp`):
 *
 * 1. wait `delay` + random(0 .. `delayExtra`−1) seconds;
 * 2. process the jobs one after another, pausing 200 ms between them; a job whose
 *    directory another job (of any `BackgroundDownload` in this process) is downloading
 *    goes back to the end of the queue;
 * 3. job: when `<dir>/overlaybd.commit` exists, switch to it. Otherwise copy the blob into
 *    `<dir>/.download` (sized to the blob) in `blockSize` units, skipping units already
 *    allocated in that file (SEEK_HOLE) and copying units the block cache already holds
 *    from there, fetching the rest from the *uncached* source throttled to `maxMBps` MiB/s
 *    (each read and write tried at most twice); fdatasync; hash the whole file; on a
 *    digest mismatch delete `.download` (so the next attempt fetches everything) and fail;
 *    else rename it to `overlaybd.commit` and switch the job's `SwitchableBlobReader` to a
 *    `FileReader` of it;
 * 4. a failed job is re-queued while it has attempts left (`tryCnt`; every processing of
 *    a job counts as one attempt).
 *
 * `close()` aborts: sleeps end at once and the copy stops before its next unit (a source
 * read in flight is awaited, one unit at most); `.download` stays for the next run.
 * Sources are owned by the caller and never closed here. The `enable` switch of the
 * upstream `download` object is the caller's to check.
 *
 * SEEK_HOLE skipping only happens for a `.download` that existed before the attempt: on a
 * file system without hole reporting (everything looks allocated) a fresh file is still
 * downloaded in full, and a wrong reuse ends in a digest mismatch and a full re-download.
 *
 * @example
 * ```ts
 * const layer = new SwitchableBlobReader(cachedReader);
 * const bg = BackgroundDownload.start({
 *   jobs: [{ dir: '/var/lib/layers/17', digest, source: uncachedRemote, cached: cachedReader, target: layer }],
 *   config: { delay: 300, maxMBps: 100 },
 * });
 * // … on device close:
 * await bg.close();
 * ```
 */
import { constants } from 'node:fs';
import { mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import { debuglog } from 'node:util';
import type { BlobReader } from '../io/blob-reader.ts';
import { readFully } from '../io/blob-reader.ts';
import { DataCorruptionError, InvalidArgumentError, UnsupportedError } from '../io/errors.ts';
import { FileReader } from '../io/file-reader.ts';
import { native } from '../native/index.ts';
import { systemClock, type Clock } from './clock.ts';
import type { SwitchableBlobReader } from './switchable-blob-reader.ts';
import { TokenBucket } from './token-bucket.ts';

const debug = debuglog('obd');

export const DOWNLOAD_FILE = '.download';
export const COMMIT_FILE = 'overlaybd.commit';
const PAUSE_BETWEEN_JOBS_MS = 200;
const HASH_CHUNK = 1 << 20;
const MIB = 1 << 20;

/** Directories being downloaded in this process. */
const activeDirs = new Set<string>();

/** Upstream `download` settings (runtime.md §3); missing keys take upstream's defaults. */
export interface DownloadConfig {
  /** Seconds before starting. Default 300. */
  delay?: number;
  /** Bound of the random extra delay in seconds; ≤ 0 → 30. Default 30. */
  delayExtra?: number;
  /** Throttle in MiB/s; ≤ 0 = unlimited. Default 100. */
  maxMBps?: number;
  /** Attempts per layer. Default 5. */
  tryCnt?: number;
  /** Copy unit in bytes. Default 262144. */
  blockSize?: number;
}

/** A resolved {@link DownloadConfig}. */
export type ResolvedDownloadConfig = Required<DownloadConfig>;

/** Applies the defaults and limits of runtime.md §3. */
export function resolveDownloadConfig(c: DownloadConfig = {}): ResolvedDownloadConfig {
  const blockSize = c.blockSize ?? 262144;
  if (!Number.isSafeInteger(blockSize) || blockSize <= 0) throw new InvalidArgumentError(`Cannot download: block size ${blockSize} is not a positive integer`);
  const delay = c.delay ?? 300;
  const delayExtra = c.delayExtra ?? 30;
  return {
    delay: Math.max(0, delay),
    delayExtra: delayExtra <= 0 ? 30 : delayExtra,
    maxMBps: c.maxMBps ?? 100,
    tryCnt: Math.max(1, Math.floor(c.tryCnt ?? 5)),
    blockSize,
  };
}

/** One layer blob to download. */
export interface DownloadJob {
  /** Layer directory holding `.download` and `overlaybd.commit`; created when missing. */
  dir: string;
  /** `sha256:<hex>` (or `sha512:`) the downloaded bytes must hash to. */
  digest: string;
  /** Uncached reader of the blob (e.g. the registry range reader); its size is the blob size. */
  source: BlobReader;
  /** Optional cache of the same blob: units it holds are copied from it, not fetched. */
  cached?: BlobReader & { isCached(offset: number, length: number): boolean };
  /** Switched to a `FileReader` of `overlaybd.commit` once it exists. */
  target?: SwitchableBlobReader;
}

/** Options of {@link BackgroundDownload.start}. */
export interface BackgroundDownloadOptions {
  jobs: readonly DownloadJob[];
  config?: DownloadConfig;
  clock?: Clock;
  /** Uniform in [0, 1); picks the extra delay. Default `Math.random`. */
  random?: () => number;
}

/** What happened to one job. */
export interface DownloadOutcome {
  dir: string;
  digest: string;
  state: 'pending' | 'committed' | 'failed' | 'cancelled';
  /** Times the job was processed. */
  attempts: number;
  /** `<dir>/overlaybd.commit` once committed. */
  path?: string;
  /** Last error, when an attempt failed. */
  error?: unknown;
  /** Bytes read from the source, over all attempts. */
  fetchedBytes: number;
  /** Bytes copied from the block cache. */
  cachedBytes: number;
  /** Bytes already in `.download`, skipped. */
  skippedBytes: number;
}

/** Result of one {@link downloadBlob}. */
export interface DownloadResult {
  path: string;
  fetchedBytes: number;
  cachedBytes: number;
  skippedBytes: number;
}

/** Options of {@link downloadBlob}. */
export interface DownloadBlobOptions {
  blockSize?: number;
  /** Throttle for source reads; none when absent. */
  bucket?: TokenBucket;
  signal?: AbortSignal;
  /** Progress callback per copied unit (for accounting across failed attempts). */
  onUnit?: (kind: 'fetched' | 'cached' | 'skipped', bytes: number) => void;
}

async function twice<T>(fn: () => Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    signal?.throwIfAborted();
    debug('download: retrying after %s', (e as Error).message);
    return fn();
  }
}

async function writeAll(fh: FileHandle, data: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function hashAlgorithm(digest: string): { algorithm: string; hex: string } {
  const m = /^(sha256|sha512):([0-9a-f]+)$/.exec(digest);
  if (m === null) {
    if (/^[a-z0-9]+:/.test(digest)) throw new UnsupportedError(`Cannot verify download: digest algorithm of ${digest} is not supported`);
    throw new InvalidArgumentError(`Cannot verify download: ${digest} is not a digest`);
  }
  return { algorithm: m[1] as string, hex: m[2] as string };
}

/** Whether the job's cache holds the range; false when it was closed (e.g. by a switch). */
function isCachedSafely(cached: NonNullable<DownloadJob['cached']>, offset: number, length: number): boolean {
  try {
    return cached.isCached(offset, length);
  } catch {
    return false;
  }
}

/** True when every byte of `[offset, offset+length)` is allocated in the file. */
function isAllocated(fh: FileHandle, offset: number, length: number): boolean {
  const hole = native.seekHole(fh.fd, offset);
  return hole >= offset + length;
}

async function hashFile(fh: FileHandle, options: { size: number; algorithm: string; signal: AbortSignal | undefined }): Promise<string> {
  const h = createHash(options.algorithm);
  const buf = new Uint8Array(Math.min(HASH_CHUNK, Math.max(1, options.size)));
  for (let off = 0; off < options.size; ) {
    options.signal?.throwIfAborted();
    const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, options.size - off), off);
    if (bytesRead === 0) break;
    h.update(buf.subarray(0, bytesRead));
    off += bytesRead;
  }
  return h.digest('hex');
}

/**
 * One download attempt of `job` (step 3 without the switch): fills `<dir>/.download`,
 * verifies it and renames it to `<dir>/overlaybd.commit`, whose path it returns. Throws
 * `DataCorruptionError` on a digest mismatch, after deleting `.download`.
 */
export async function downloadBlob(job: DownloadJob, options: DownloadBlobOptions = {}): Promise<DownloadResult> {
  const { signal, bucket } = options;
  const blockSize = options.blockSize ?? 262144;
  const { algorithm, hex } = hashAlgorithm(job.digest);
  const size = job.source.size;
  await mkdir(job.dir, { recursive: true });
  const path = join(job.dir, DOWNLOAD_FILE);
  const commit = join(job.dir, COMMIT_FILE);
  const existed = await stat(path).then(() => true, () => false);
  const result: DownloadResult = { path: commit, fetchedBytes: 0, cachedBytes: 0, skippedBytes: 0 };
  const count = (kind: 'fetched' | 'cached' | 'skipped', bytes: number): void => {
    result[`${kind}Bytes`] += bytes;
    options.onUnit?.(kind, bytes);
  };
  const fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644);
  let actual: string;
  try {
    if ((await fh.stat()).size !== size) await fh.truncate(size);
    const buf = new Uint8Array(Math.min(blockSize, Math.max(1, size)));
    for (let off = 0; off < size; off += blockSize) {
      signal?.throwIfAborted();
      const len = Math.min(blockSize, size - off);
      if (existed && isAllocated(fh, off, len)) {
        count('skipped', len);
        continue;
      }
      const unit = buf.subarray(0, len);
      const cached = job.cached;
      if (cached !== undefined && isCachedSafely(cached, off, len)) {
        await twice(() => readFully(cached, unit, off, `cached blob ${job.digest}`), signal);
        count('cached', len);
      } else {
        await bucket?.take(len, signal);
        await twice(() => readFully(job.source, unit, off, `blob ${job.digest}`), signal);
        count('fetched', len);
      }
      await twice(() => writeAll(fh, unit, off), signal);
    }
    await fh.datasync();
    actual = await hashFile(fh, { size, algorithm, signal });
  } finally {
    await fh.close();
  }
  if (actual !== hex) {
    await rm(path, { force: true });
    throw new DataCorruptionError(`Cannot commit download of ${job.digest} in ${job.dir}: content hashes to ${algorithm}:${actual}`);
  }
  await rename(path, commit);
  await syncDirectory(job.dir).catch(() => undefined);
  return result;
}

async function switchTo(job: DownloadJob, path: string): Promise<void> {
  if (job.target === undefined) return;
  await job.target.switchTo(await FileReader.open(path));
}

function isAbort(e: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (e as Error | undefined)?.name === 'AbortError';
}

/** A running background download of a device's layers. See the file comment. */
export class BackgroundDownload {
  /** Resolves when every job is committed, failed or cancelled; never rejects. */
  readonly done: Promise<DownloadOutcome[]>;
  readonly config: ResolvedDownloadConfig;
  #abort = new AbortController();
  #clock: Clock;
  #random: () => number;
  #jobs: readonly DownloadJob[];
  #outcomes: DownloadOutcome[];

  private constructor(options: BackgroundDownloadOptions) {
    this.config = resolveDownloadConfig(options.config);
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#jobs = options.jobs;
    this.#outcomes = options.jobs.map((j) => ({
      dir: j.dir,
      digest: j.digest,
      state: 'pending',
      attempts: 0,
      fetchedBytes: 0,
      cachedBytes: 0,
      skippedBytes: 0,
    }));
    this.done = this.#run().then(
      () => this.outcomes,
      (e: unknown) => {
        debug('download: stopped: %s', (e as Error).message);
        return this.outcomes;
      },
    );
  }

  /** Starts the delay and then the jobs. */
  static start(options: BackgroundDownloadOptions): BackgroundDownload {
    return new BackgroundDownload(options);
  }

  /** Current outcomes (copies). */
  get outcomes(): DownloadOutcome[] {
    return this.#outcomes.map((o) => ({ ...o }));
  }

  /** Stops the download promptly and waits for it; pending jobs end `cancelled`. Idempotent. */
  async close(): Promise<void> {
    this.#abort.abort();
    await this.done;
  }

  async #run(): Promise<void> {
    const signal = this.#abort.signal;
    const c = this.config;
    try {
      const extra = Math.floor(this.#random() * c.delayExtra);
      await this.#clock.sleep((c.delay + extra) * 1000, signal);
      const queue = this.#jobs.map((_, i) => i);
      const bucket = new TokenBucket({ bytesPerSecond: c.maxMBps * MIB, burstBytes: MIB, clock: this.#clock });
      for (let first = true; queue.length > 0; first = false) {
        if (!first) await this.#clock.sleep(PAUSE_BETWEEN_JOBS_MS, signal);
        const i = queue.shift() as number;
        const job = this.#jobs[i] as DownloadJob;
        const out = this.#outcomes[i] as DownloadOutcome;
        const key = resolve(job.dir);
        if (activeDirs.has(key)) {
          queue.push(i);
          continue;
        }
        activeDirs.add(key);
        try {
          out.attempts++;
          await this.#process(job, { out, bucket, signal });
          out.state = 'committed';
        } catch (e) {
          if (isAbort(e, signal)) throw e;
          out.error = e;
          debug('download: %s in %s failed (attempt %d of %d): %s', job.digest, job.dir, out.attempts, c.tryCnt, (e as Error).message);
          if (out.attempts < c.tryCnt) queue.push(i);
          else out.state = 'failed';
        } finally {
          activeDirs.delete(key);
        }
      }
    } finally {
      for (const o of this.#outcomes) if (o.state === 'pending') o.state = 'cancelled';
    }
  }

  async #process(job: DownloadJob, ctx: { out: DownloadOutcome; bucket: TokenBucket; signal: AbortSignal }): Promise<void> {
    const commit = join(job.dir, COMMIT_FILE);
    const exists = await stat(commit).then(() => true, () => false);
    if (!exists) {
      await downloadBlob(job, {
        blockSize: this.config.blockSize,
        bucket: ctx.bucket,
        signal: ctx.signal,
        onUnit: (kind, bytes) => void (ctx.out[`${kind}Bytes`] += bytes),
      });
    }
    ctx.out.path = commit;
    await switchTo(job, commit);
  }
}
