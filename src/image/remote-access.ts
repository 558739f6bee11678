/**
 * Remote layer access for devices: one registry client per process, one on-disk cache,
 * and per remote lower the reader chain
 * `registry range source → RemoteBlobReader (parallel, coalescing) → CachedBlobReader
 * (persistent, optional) → SwitchableBlobReader (background download, optional)`.
 * `opener()` plugs into `openDevice` for lowers given by `repoBlobUrl` + `digest`.
 */
import type { BlobReader } from '../io/blob-reader.ts';
import { InvalidArgumentError } from '../io/errors.ts';
import { RegistryClient, type RegistryClientOptions } from '../registry/client.ts';
import { warmHttp } from '../registry/node-transport.ts';
import { createBlobRangeSource } from '../registry/blob-range-source.ts';
import { RemoteBlobReader, type RemoteBlobReaderOptions } from '../registry/remote-blob-reader.ts';
import type { CredentialProvider } from '../registry/credentials.ts';
import { BlockCache } from '../cache/block-cache.ts';
import { CachedBlobReader } from '../cache/cached-blob-reader.ts';
import { SwitchableBlobReader } from '../cache/switchable-blob-reader.ts';
import { BackgroundDownload, type DownloadOutcome } from '../cache/background-download.ts';

type DownloadOptions = NonNullable<RemoteAccessOptions['download']>;

/**
 * Reader defaults for device reads (a caller's `reader` options override them): a
 * sequential stream (an executable or a library paged in front to back) grows its
 * requests up to 2 MiB instead of paying a round trip per 256 KiB, and the chunks it
 * pulls in stay in memory long enough for the reads that need them (bench/cold-start,
 * one profiled Python start: 58 → 49 range requests; with the 8 MiB reader default,
 * chunks were evicted and fetched again). The LRU is per layer: up to 32 MiB each.
 */
export const DEVICE_READER_DEFAULTS = { readaheadBytes: 2 << 20, cacheBytes: 32 << 20 } as const;

/**
 * Bytes at the end of a remote layer read ahead when it is opened, beside the header:
 * opening a tar-wrapped ZFile layer reads its header, then its trailer, jump table and
 * LSMT index, which lie at the end; fetching the tail at once saves that second round
 * trip (bench/cold-start layers of 35–65 MB: 70–120 KiB of tail read at open).
 */
export const OPEN_TAIL_BYTES = 256 << 10;

/** Starts reading the last {@link OPEN_TAIL_BYTES} of `reader` into its caches; a failure is left to the real reads. */
function prefetchTail(reader: BlobReader): void {
  const length = Math.min(reader.size, OPEN_TAIL_BYTES);
  if (length > 0) reader.readAt(new Uint8Array(length), reader.size - length).catch(() => undefined);
}

/** Reads upstream's `download` object (runtime.md §3), checking types. */
function parseDownload(o: Record<string, unknown>): DownloadOptions {
  const num = (k: string): number | undefined => {
    const v = o[k];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new InvalidArgumentError(`Invalid download.${k}: expected a number`);
    return v;
  };
  const out: DownloadOptions = { enable: o['enable'] === true };
  for (const k of ['delay', 'delayExtra', 'maxMBps', 'tryCnt', 'blockSize'] as const) {
    const v = num(k);
    if (v !== undefined) out[k] = v;
  }
  return out;
}

export interface RemoteAccessOptions {
  credentials?: CredentialProvider;
  /** Hosts reached over plain HTTP (hosts of `http://` blob URLs are added automatically). */
  plainHttp?: string[];
  /** Hosts whose TLS certificate is not verified. */
  insecure?: string[];
  mirrors?: Record<string, string[]>;
  p2pProxy?: string;
  /** Persistent cache directory; no persistent cache when absent. */
  cacheDir?: string;
  cacheSizeBytes?: number;
  reader?: RemoteBlobReaderOptions;
  /** Background download (runtime.md §7) for lowers that have a `dir`. */
  download?: { enable: boolean; delay?: number; delayExtra?: number; maxMBps?: number; tryCnt?: number; blockSize?: number };
  userAgent?: string;
}

/** Where a blob lives, as a device config names it. */
export interface RemoteBlobLocation {
  /** `<scheme>://<host>/v2/<repo>/blobs` */
  repoBlobUrl: string;
  digest: string;
  size: number;
  /** Layer directory: background-download target. */
  dir?: string;
}

/** Splits a `repoBlobUrl` into scheme, registry host and repository. */
export function parseRepoBlobUrl(url: string): { scheme: 'http' | 'https'; registry: string; repository: string } {
  const m = /^(https?):\/\/([^/]+)\/v2\/(.+?)\/blobs\/?$/.exec(url);
  if (m === null) throw new InvalidArgumentError(`Invalid repoBlobUrl '${url}': expected <scheme>://<host>/v2/<repo>/blobs`);
  return { scheme: m[1] as 'http' | 'https', registry: m[2] as string, repository: m[3] as string };
}

/** Builds a `repoBlobUrl` (snapshotter.md §8.3). */
export function repoBlobUrl(registry: string, repository: string, plainHttp = false): string {
  const host = registry === 'docker.io' ? 'registry-1.docker.io' : registry;
  return `${plainHttp ? 'http' : 'https'}://${host}/v2/${repository}/blobs`;
}

export class RemoteAccess {
  readonly #options: RemoteAccessOptions;
  readonly #clients = new Map<string, RegistryClient>();
  #cache: Promise<BlockCache> | undefined;
  readonly #downloads: BackgroundDownload[] = [];
  readonly #readers: RemoteBlobReader[] = [];

  constructor(options: RemoteAccessOptions = {}) {
    this.#options = options;
  }

  /** The registry client for `registry` reached over `scheme`. */
  client(registry: string, scheme: 'http' | 'https' = 'https'): RegistryClient {
    const key = `${scheme}://${registry}`;
    let c = this.#clients.get(key);
    if (c === undefined) {
      const o = this.#options;
      const opts: RegistryClientOptions = {
        ...(o.credentials ? { credentials: o.credentials } : {}),
        plainHttp: [...(o.plainHttp ?? []), ...(scheme === 'http' ? [registry] : [])],
        ...(o.insecure ? { insecure: o.insecure } : {}),
        ...(o.mirrors ? { mirrors: o.mirrors } : {}),
        ...(o.p2pProxy ? { p2pProxy: o.p2pProxy } : {}),
        ...(o.userAgent ? { userAgent: o.userAgent } : {}),
      };
      c = new RegistryClient(opts);
      this.#clients.set(key, c);
    }
    return c;
  }

  async #blockCache(): Promise<BlockCache | undefined> {
    const dir = this.#options.cacheDir;
    if (dir === undefined) return undefined;
    this.#cache ??= BlockCache.open({
      dir,
      ...(this.#options.cacheSizeBytes !== undefined ? { capacityBytes: this.#options.cacheSizeBytes } : {}),
      ...(this.#options.reader?.refillSize !== undefined ? { refillSize: this.#options.reader.refillSize } : {}),
    });
    return this.#cache;
  }

  /**
   * Opens one remote blob as a reader (cached and downloadable per the options; a
   * device config's own `download` object overrides the access-wide one). `reader`
   * adjusts the device reader defaults for this blob (e.g. a smaller refill for a device
   * that replays a trace); the access-wide `reader` options still win.
   */
  async openBlob(loc: RemoteBlobLocation, download = this.#options.download, reader: RemoteBlobReaderOptions = {}): Promise<BlobReader> {
    const { scheme, registry, repository } = parseRepoBlobUrl(loc.repoBlobUrl);
    const client = this.client(registry, scheme);
    const source = createBlobRangeSource(client, { registry, repository }, { digest: loc.digest, size: loc.size });
    const remote = new RemoteBlobReader(source, { name: loc.digest, ...DEVICE_READER_DEFAULTS, ...reader, ...(this.#options.reader ?? {}) });
    this.#readers.push(remote);
    const cache = await this.#blockCache();
    const cached = cache === undefined ? undefined : await CachedBlobReader.open(cache, remote, { digest: loc.digest });
    prefetchTail(cached ?? remote);
    const dl = download;
    if (dl?.enable !== true || loc.dir === undefined || loc.dir === '') return cached ?? remote;
    const switchable = new SwitchableBlobReader(cached ?? remote);
    const uncached = new RemoteBlobReader(source, { name: loc.digest, ...(this.#options.reader ?? {}) });
    this.#downloads.push(
      BackgroundDownload.start({
        jobs: [{ dir: loc.dir, digest: loc.digest, source: uncached, ...(cached ? { cached } : {}), target: switchable }],
        config: dl,
      }),
    );
    return switchable;
  }

  /**
   * The opener `openDevice` uses for remote lowers; `download` is the device config's
   * override, `reader` adjusts the device reader defaults (see {@link openBlob}).
   */
  opener(
    download?: Record<string, unknown>,
    reader: RemoteBlobReaderOptions = {},
  ): (lower: { digest: string; size: number; dir: string }, index: number, url: string) => Promise<BlobReader> {
    const dl = download === undefined ? this.#options.download : parseDownload(download);
    return (lower, _index, url) =>
      this.openBlob({ repoBlobUrl: url, digest: lower.digest, size: lower.size, ...(lower.dir ? { dir: lower.dir } : {}) }, dl, reader);
  }

  /** Resolves when every background download started so far has ended. */
  async downloadsDone(): Promise<DownloadOutcome[]> {
    return (await Promise.all(this.#downloads.map((d) => d.done))).flat();
  }

  /** Loads the HTTP client now (see `warmHttp`), for a process that opens its layers later, on a start path. */
  warm(): void {
    warmHttp();
  }

  /** Request counters summed over every remote reader opened so far. */
  stats(): { requests: number; bytesFetched: number } {
    let requests = 0;
    let bytesFetched = 0;
    for (const r of this.#readers) {
      requests += r.stats.requests;
      bytesFetched += r.stats.bytesFetched;
    }
    return { requests, bytesFetched };
  }

  async close(): Promise<void> {
    await Promise.all(this.#downloads.map((d) => d.close()));
    const cache = await this.#cache?.catch(() => undefined);
    await cache?.close();
    await Promise.all([...this.#clients.values()].map((c) => c.close()));
  }
}
