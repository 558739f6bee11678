/**
 * OCI image → overlaybd image (convertor.md Part A, native engine; image-format.md).
 *
 * `convertImage(src, dst, options)` resolves `src`; an index (or docker manifest list)
 * converts every child except attestation manifests (at most `concurrency` manifests at
 * once) and gets a new index; a manifest converts layer by layer, in order:
 *
 * - the layer blob is streamed (from a registry it is first downloaded, several layers
 *   ahead, each digest-verified), decompressed by magic and applied onto the file system
 *   of one disk image for the whole manifest (made with mkfs, default 64 GiB, or from the
 *   layers reused from the cache); the uncompressed stream must hash to the config's
 *   diff_id; the blocks the apply changed become the layer (`raw-image-builder.ts`);
 * - they are committed as a tar-wrapped ZFile (lz4 by default) stamped with the
 *   chain-ID UUID and its parent's, while the next layer applies;
 * - layer descriptors carry `blob-digest`, `blob-size` and `version 0.1.0` (and
 *   `blob-fs-type` for a file system other than ext4); the config gets the new
 *   `diff_ids` (Go-compatible JSON, `image-json.ts`); docker or OCI media types per `oci`.
 *
 * Nothing is pushed before every manifest has converted: then layers, configs and
 * manifests go to `dst` by digest, the top-level object under the tag.
 *
 * With a `ConversionCache`, a layer whose chain ID, recipe and parent blob were
 * converted before is not rebuilt: a blob still present in the target is reused as is,
 * one stored elsewhere is cross-repository mounted (same registry) or copied at push
 * time, and downloaded only when a layer above it still has to be built on it.
 *
 * Progress and warnings: `options.onEvent` and the `obd:convert` diagnostics channel.
 *
 * @example
 * ```ts
 * const access = new RemoteAccess();
 * const src = await openImageEndpoint('oci:/images/hello:latest', { access });
 * const dst = await openImageEndpoint('registry.local/hello:obd', { access, plainHttp: ['registry.local'] });
 * const r = await convertImage(src, dst, { workDir: '/var/tmp/obd-convert' });
 * r.descriptor.digest; // the pushed manifest or index
 * ```
 */
import { createHash } from 'node:crypto';
import { channel } from 'node:diagnostics_channel';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DataCorruptionError, FailedPreconditionError, InvalidArgumentError, ObdError, UnsupportedError } from '../io/errors.ts';
import { ANNOTATIONS, isIndexMediaType, isManifestMediaType, MEDIA_TYPES, type Descriptor, type Index, type Manifest } from '../image/descriptor.ts';
import { openImageEndpoint, type ImageEndpoint } from '../image/image-endpoint.ts';
import { isOciLayoutRef, parseOciLayoutRef } from '../image/oci-layout.ts';
import { fileDigest } from '../image/file-digest.ts';
import { parseRepoBlobUrl, type RemoteAccess } from '../image/remote-access.ts';
import { OVERLAYBD_VERSION } from '../image/write-image.ts';
import { RawImageBuilder, type RawBuiltLayer } from './raw-image-builder.ts';
import { DEFAULT_BASE_LAYER, wrapBaseLayer } from './base-layer.ts';
import { chainIds, layerUuid } from './chain-id.ts';
import type { BlobLocation, CachedLayer, ConversionCache } from './conversion-cache.ts';
import { configDiffIds, convertImageConfig, marshalIndex, marshalManifest } from './image-json.ts';
import type { LayerApplier } from './layer-applier.ts';
import { DirectoryApplier } from './directory-applier.ts';
import { Semaphore } from './_semaphore.ts';
import { removeWorkDir } from './_remove-work-dir.ts';

/** Progress and warnings of a conversion (also published on `obd:convert`). */
export type ConvertEvent =
  | { type: 'manifest'; platform: string; source: string; layers: number }
  | {
      type: 'layer';
      platform: string;
      /** 0-based layer index and the manifest's layer count. */
      index: number;
      count: number;
      phase: 'download' | 'apply' | 'commit' | 'reuse' | 'push';
      /** Bytes so far: compressed for download/push, uncompressed for apply, blob size for commit/reuse. */
      bytes: number;
      total?: number;
      done: boolean;
    }
  | { type: 'warning'; platform: string; index?: number; entry?: string; message: string }
  | { type: 'pushed'; kind: 'layer' | 'config' | 'manifest' | 'index'; digest: string; size: number; how: 'uploaded' | 'mounted' | 'present' };

export const CONVERT_CHANNEL = 'obd:convert';
const events = channel(CONVERT_CHANNEL);

export interface ConvertImageOptions {
  /** Work files: per-manifest directories, downloads, dumps. */
  workDir: string;
  /** `fstype[;mountopts[;mkfsopts]]` (default `ext4` with upstream's mkfs options). */
  fsType?: string;
  /** Virtual device size in GiB (default 64). */
  vsizeGb?: number;
  /**
   * mkfs the bottom layer (default true). False builds on the prebuilt base layer
   * (`baseLayer`), which is prepended to the image (image-format.md §4.3).
   */
  mkfs?: boolean;
  /** The raw ZFile of an empty ext4 (default upstream's `/opt/overlaybd/baselayers/ext4_64`). */
  baseLayer?: string;
  algorithm?: 'lz4' | 'zstd';
  /** ZFile block size in bytes (default 4096). */
  blockSize?: number;
  /** OCI media types instead of docker ones. */
  oci?: boolean;
  /** Manifests converted at once (default 4; 0 = unlimited). */
  concurrency?: number;
  /** Layers downloaded ahead of the one being applied (registry sources; default 3). */
  downloadAhead?: number;
  /** Tag of the top-level object (default: the destination's tag, else the source's). */
  tag?: string;
  /** Write `manifest.json`, `config.json` (and `index.json`) under `<workDir>/dump`. */
  dumpManifest?: boolean;
  /** Keep per-manifest work directories (the layers' `overlaybd.commit` files). */
  reserve?: boolean;
  cache?: ConversionCache;
  /** Registry access for cache hits stored elsewhere (copy, cross-repository mount). */
  access?: RemoteAccess;
  applier?: LayerApplier;
  onEvent?: (e: ConvertEvent) => void;
  /** Interrupts the conversion: the running apply is stopped, devices are torn down, nothing is pushed. */
  signal?: AbortSignal;
}

export interface ConvertResult {
  /** The pushed top-level manifest or index. */
  descriptor: Descriptor;
  manifests: number;
  layersConverted: number;
  /** Layers taken from the conversion cache. */
  layersReused: number;
  blobsUploaded: number;
  blobsMounted: number;
  /** Blobs the target already had. */
  blobsPresent: number;
  bytesUploaded: number;
}

interface LayerOut {
  desc: Descriptor;
  chainId: string;
  parentDigest: string;
  /** The committed blob on disk (converted or downloaded). */
  file?: string;
  /** The cache row a reused layer came from. */
  cached?: CachedLayer;
}

interface ManifestOut {
  kind: 'manifest';
  desc: Descriptor;
  bytes: Uint8Array;
  config: { desc: Descriptor; bytes: Uint8Array };
  layers: LayerOut[];
}

interface IndexOut {
  kind: 'index';
  desc: Descriptor;
  bytes: Uint8Array;
  children: Array<ManifestOut | IndexOut>;
}

const ATTESTATION = 'vnd.docker.reference.type';
const MAX_DEPTH = 8;
const dec = new TextDecoder();

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

function platformOf(d: Descriptor): string {
  const p = d.platform;
  return p === undefined ? '' : `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

function parseJson(bytes: Uint8Array, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(dec.decode(bytes)) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new SyntaxError('not an object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new DataCorruptionError(`Cannot convert: ${what} is not a JSON object (${(e as Error).message})`, { cause: e });
  }
}

/** Where an endpoint stores blobs, as the conversion cache records it. */
export function endpointLocation(ep: ImageEndpoint): BlobLocation {
  if (ep.repoBlobUrl !== undefined) {
    const { registry, repository } = parseRepoBlobUrl(ep.repoBlobUrl);
    return { host: registry, repo: repository, url: ep.repoBlobUrl };
  }
  if (isOciLayoutRef(ep.name)) {
    const dir = resolve(parseOciLayoutRef(ep.name).dir);
    return { host: 'oci-layout', repo: dir, url: `oci:${dir}` };
  }
  throw new InvalidArgumentError(`Cannot locate the blobs of ${ep.name}`);
}

/** The same domain error with `prefix: ` in front of its message (the cause kept). */
function withContext(e: unknown, prefix: string): unknown {
  if (!(e instanceof ObdError) || e.message.startsWith(prefix)) return e;
  const Cls = e.constructor as new (message: string, options?: { cause?: unknown }) => ObdError;
  return new Cls(`${prefix}: ${e.message}`, { cause: e });
}

/** Passes a stream through, hashing and counting it; fails at the end on a digest or size mismatch. */
async function* verified(source: AsyncIterable<Uint8Array>, desc: Descriptor, onBytes?: (n: number) => void): AsyncGenerator<Uint8Array> {
  const h = createHash('sha256');
  let n = 0;
  for await (const chunk of source) {
    h.update(chunk);
    n += chunk.length;
    onBytes?.(n);
    yield chunk;
  }
  const got = `sha256:${h.digest('hex')}`;
  if (got !== desc.digest || n !== desc.size) {
    throw new DataCorruptionError(`Cannot convert layer ${desc.digest}: the blob has ${n} bytes hashing to ${got} (expected ${desc.size} bytes)`);
  }
}

/** One conversion run. */
class Conversion {
  readonly #src: ImageEndpoint;
  readonly #dst: ImageEndpoint;
  readonly #o: ConvertImageOptions;
  readonly #sem: Semaphore;
  readonly #applier: LayerApplier;
  readonly #workDir: string;
  readonly #recipe: string;
  readonly #dstLocation: BlobLocation;
  readonly #workDirs: string[] = [];
  readonly #endpoints = new Map<string, Promise<ImageEndpoint>>();
  #count = 0;
  /** The first failure: later work stops and this is what the conversion reports. */
  #failure: unknown;
  readonly result: Omit<ConvertResult, 'descriptor'> = {
    manifests: 0,
    layersConverted: 0,
    layersReused: 0,
    blobsUploaded: 0,
    blobsMounted: 0,
    blobsPresent: 0,
    bytesUploaded: 0,
  };

  constructor(src: ImageEndpoint, dst: ImageEndpoint, o: ConvertImageOptions) {
    this.#src = src;
    this.#dst = dst;
    this.#o = o;
    this.#sem = new Semaphore(o.concurrency ?? 4);
    this.#applier = o.applier ?? new DirectoryApplier();
    this.#workDir = resolve(o.workDir);
    this.#recipe = `fs=${this.#fsType};mkfs=${o.mkfs === false ? 0 : 1};vsize=${this.#vsizeGb};${o.algorithm ?? 'lz4'};bs=${o.blockSize ?? 4096}`;
    this.#dstLocation = endpointLocation(dst);
  }

  get #fsType(): string {
    return this.#o.fsType ?? 'ext4';
  }

  get #vsizeGb(): number {
    return this.#o.vsizeGb ?? 64;
  }

  /** Throws when interrupted or after another manifest failed. */
  #check(): void {
    if (this.#o.signal?.aborted === true) throw new FailedPreconditionError('Cannot convert: interrupted');
    if (this.#failure !== undefined) throw new FailedPreconditionError('Cannot convert: stopped after another manifest failed');
  }

  #emit(e: ConvertEvent): void {
    this.#o.onEvent?.(e);
    if (events.hasSubscribers) events.publish(e);
  }

  /** The wrapped base layer (`mkfs: false`): its file in the work dir and descriptor. */
  #base: { file: string; raw: string; desc: Descriptor } | undefined;

  async #prepareBase(): Promise<void> {
    if (this.#o.mkfs !== false) return;
    const raw = resolve(this.#o.baseLayer ?? DEFAULT_BASE_LAYER);
    let bytes: Uint8Array;
    try {
      bytes = await readFile(raw);
    } catch (e) {
      throw new FailedPreconditionError(`Cannot convert without mkfs: cannot read the base layer ${raw} (${(e as Error).message})`, { cause: e });
    }
    const blob = wrapBaseLayer(bytes);
    const file = join(this.#workDir, `base-layer-${process.pid}.tar`);
    await writeFile(file, blob);
    this.#base = { file, raw, desc: this.#layerDescriptor(sha256(blob), blob.length) };
  }

  async run(): Promise<ConvertResult> {
    const tag = this.#o.tag ?? this.#dst.tag ?? this.#src.tag;
    if (tag === undefined) throw new InvalidArgumentError(`Cannot convert to ${this.#dst.name}: no tag given`);
    await mkdir(this.#workDir, { recursive: true });
    try {
      await this.#prepareBase();
      const top = await this.#process(await this.#src.resolve(), 0);
      await this.#push(top, tag);
      return { descriptor: top.desc, ...this.result };
    } finally {
      await this.#applier.close?.();
      if (this.#o.reserve !== true) {
        for (const d of this.#workDirs) await removeWorkDir(d);
        if (this.#base !== undefined) await rm(this.#base.file, { force: true });
      }
    }
  }

  async #process(desc: Descriptor, depth: number): Promise<ManifestOut | IndexOut> {
    if (depth > MAX_DEPTH) throw new DataCorruptionError(`Cannot convert ${this.#src.name}: indexes nested deeper than ${MAX_DEPTH}`);
    const bytes = await this.#src.readManifest(desc);
    const doc = parseJson(bytes, `manifest ${desc.digest}`);
    const mediaType = desc.mediaType || (typeof doc['mediaType'] === 'string' ? doc['mediaType'] : Array.isArray(doc['manifests']) ? MEDIA_TYPES.ociIndex : MEDIA_TYPES.ociManifest);
    if (isIndexMediaType(mediaType)) return this.#convertIndex({ ...desc, mediaType }, doc as unknown as Index, depth);
    if (isManifestMediaType(mediaType)) {
      return this.#sem.run(async () => {
        this.#check();
        return this.#convertManifest({ ...desc, mediaType }, doc as unknown as Manifest).catch((e: unknown) => {
          this.#failure ??= e;
          throw e;
        });
      });
    }
    throw new UnsupportedError(`Cannot convert ${desc.digest}: unsupported media type '${mediaType}'`);
  }

  async #convertIndex(desc: Descriptor, idx: Index, depth: number): Promise<IndexOut> {
    if (!Array.isArray(idx.manifests)) throw new DataCorruptionError(`Cannot convert index ${desc.digest}: no manifests`);
    const kept = idx.manifests.filter((child) => {
      if (child.annotations?.[ATTESTATION] !== 'attestation-manifest') return true;
      this.#emit({ type: 'warning', platform: platformOf(child), message: `attestation manifest ${child.digest} skipped` });
      return false;
    });
    const settled = await Promise.allSettled(kept.map((child) => this.#process(child, depth + 1)));
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed !== undefined) throw this.#failure ?? failed.reason;
    const children = settled.map((s) => (s as PromiseFulfilledResult<ManifestOut | IndexOut>).value);
    const mediaType = this.#o.oci === true ? MEDIA_TYPES.ociIndex : (idx.mediaType ?? desc.mediaType);
    const out: Index = {
      ...idx,
      ...(mediaType !== undefined ? { mediaType } : {}),
      manifests: kept.map((child, i) => {
        const c = children[i] as ManifestOut | IndexOut;
        return { ...child, mediaType: c.desc.mediaType, digest: c.desc.digest, size: c.desc.size };
      }),
    };
    const bytes = marshalIndex(out);
    if (this.#o.dumpManifest === true) await this.#dump(depth === 0 ? 'index.json' : `index-${desc.digest.slice(7, 19)}.json`, bytes);
    return { kind: 'index', desc: { mediaType: out.mediaType ?? MEDIA_TYPES.ociIndex, digest: sha256(bytes), size: bytes.length }, bytes, children };
  }

  async #dump(name: string, bytes: Uint8Array): Promise<void> {
    const dir = join(this.#workDir, 'dump');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, name), bytes);
  }

  async #readBlob(desc: Descriptor): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    for await (const chunk of verified(await this.#src.blobStream(desc), desc)) parts.push(chunk);
    return Buffer.concat(parts);
  }

  #layerDescriptor(digest: string, size: number): Descriptor {
    const annotations: Record<string, string> = {
      [ANNOTATIONS.blobDigest]: digest,
      [ANNOTATIONS.blobSize]: String(size),
      [ANNOTATIONS.version]: OVERLAYBD_VERSION,
    };
    if (this.#fsType.split(';')[0] !== 'ext4') annotations[ANNOTATIONS.fsType] = this.#fsType;
    return { mediaType: this.#o.oci === true ? MEDIA_TYPES.ociLayerTar : MEDIA_TYPES.dockerLayerTar, digest, size, annotations };
  }

  async #convertManifest(desc: Descriptor, manifest: Manifest): Promise<ManifestOut> {
    const n = ++this.#count;
    this.result.manifests++;
    if (manifest.schemaVersion !== 2 || manifest.config === undefined || !Array.isArray(manifest.layers)) {
      throw new UnsupportedError(`Cannot convert manifest ${desc.digest}: not a schema 2 image manifest`);
    }
    const platform = platformOf(desc);
    // Upstream's `<n>-<platform>-<digest hex>`, plus the process ID: two conversions
    // sharing a work dir must not clear each other's directories.
    const w = join(this.#workDir, `${n}-${platform.replace(/\//g, '_')}-${desc.digest.slice(7)}-${process.pid}`);
    this.#workDirs.push(w);
    if (!(await removeWorkDir(w))) throw new FailedPreconditionError(`Cannot convert into ${w}: a file system is still mounted below it`);
    await mkdir(w, { recursive: true });
    const configSrc = parseJson(await this.#readBlob(manifest.config), `config ${manifest.config.digest}`);
    const diffIds = configDiffIds(configSrc);
    const layers = manifest.layers;
    if (diffIds.length !== layers.length) {
      throw new DataCorruptionError(`Cannot convert manifest ${desc.digest}: ${layers.length} layers but ${diffIds.length} diff_ids in the config`);
    }
    const chain = chainIds(diffIds);
    this.#emit({ type: 'manifest', platform, source: desc.digest, layers: layers.length });
    const dirOf = (i: number): string => join(w, `${String(i).padStart(4, '0')}_${(layers[i] as Descriptor).digest}`);
    const out: LayerOut[] = [];

    // 0. The base layer (mkfs: false) below everything.
    const base = this.#base;
    const bottom: LayerOut[] = base === undefined ? [] : [{ desc: base.desc, chainId: '', parentDigest: '', file: base.file }];

    // 1. The longest prefix already converted.
    let parentDigest = base?.desc.digest ?? '';
    if (this.#o.cache !== undefined) {
      for (let i = 0; i < layers.length; i++) {
        const hit = await this.#lookup({ chainId: chain[i] as string, recipe: this.#recipe, parentDigest });
        if (hit === undefined) break;
        out.push({ desc: this.#layerDescriptor(hit.digest, hit.size), chainId: hit.chainId, parentDigest, cached: hit });
        this.#emit({ type: 'layer', platform, index: i, count: layers.length, phase: 'reuse', bytes: hit.size, done: true });
        parentDigest = hit.digest;
        this.result.layersReused++;
      }
    }

    // 2. Build the rest on top of it.
    const first = out.length;
    if (first < layers.length) {
      const lowers: string[] = base === undefined ? [] : [base.raw];
      for (const [i, l] of out.entries()) {
        l.file = join(dirOf(i), 'overlaybd.commit');
        await mkdir(dirOf(i), { recursive: true });
        await this.#fetchCached(l, l.file);
        lowers.push(l.file);
      }
      const downloads = this.#startDownloads(layers, { first, dirOf, platform });
      // A layer is committed (and its blob hashed) while the next one is applied.
      const built: Array<{ i: number; file: string; digested: Promise<{ digest: string; size: number }> }> = [];
      let builder: RawImageBuilder | undefined;
      try {
        builder = await RawImageBuilder.open({
          dir: join(w, 'disk'),
          lowers,
          virtualSize: this.#vsizeGb * 2 ** 30,
          mkfs: first === 0 && this.#o.mkfs !== false,
          fsType: this.#fsType,
          applier: this.#applier,
        });
        for (let i = first; i < layers.length; i++) {
          this.#check();
          const source = await (downloads[i] as () => Promise<AsyncIterable<Uint8Array>>)();
          const count = layers.length;
          const layer = layers[i] as Descriptor;
          const context = `Cannot convert layer ${i} (${layer.digest})${platform ? ` of ${platform}` : ''}`;
          const expect = { blobDigest: layer.digest, blobSize: layer.size, diffId: diffIds[i] as string, what: context };
          const { committed } = await this.#build(builder, source, { i, count, platform, dir: dirOf(i), chain, expect }).catch((e: unknown) => {
            throw withContext(e, context);
          });
          const digested = committed.then(fileDigest).then(
            (d) => {
              this.#emit({ type: 'layer', platform, index: i, count, phase: 'commit', bytes: d.size, done: true });
              return d;
            },
            (e: unknown) => {
              throw withContext(e, context);
            },
          );
          digested.catch(() => {});
          built.push({ i, file: join(dirOf(i), 'overlaybd.commit'), digested });
          this.result.layersConverted++;
        }
        const closed = builder.close(); // the disk goes while the last layer commits
        closed.catch(() => {});
        for (const b of built) {
          const { digest, size } = await b.digested;
          out.push({ desc: this.#layerDescriptor(digest, size), chainId: chain[b.i] as string, parentDigest, file: b.file });
          parentDigest = digest;
        }
        await closed;
      } finally {
        await Promise.allSettled(built.map((b) => b.digested));
        await builder?.close();
        await downloads.cancel();
      }
    }

    // 3. Config and manifest.
    out.unshift(...bottom);
    const configBytes = convertImageConfig(configSrc, out.map((l) => l.desc.digest));
    const oci = this.#o.oci === true;
    const configDesc: Descriptor = { mediaType: oci ? MEDIA_TYPES.ociConfig : MEDIA_TYPES.dockerConfig, digest: sha256(configBytes), size: configBytes.length };
    const mediaType = oci ? MEDIA_TYPES.ociManifest : MEDIA_TYPES.dockerManifest;
    const converted: Manifest = { ...manifest, mediaType, config: configDesc, layers: out.map((l) => l.desc) };
    const bytes = marshalManifest(converted);
    if (this.#o.dumpManifest === true) {
      const tagName = `${n}-${platform.replace(/\//g, '_') || 'image'}`;
      await this.#dump(`${tagName}-manifest.json`, bytes);
      await this.#dump(`${tagName}-config.json`, configBytes);
    }
    return { kind: 'manifest', desc: { mediaType, digest: sha256(bytes), size: bytes.length }, bytes, config: { desc: configDesc, bytes: configBytes }, layers: out };
  }

  async #build(
    builder: RawImageBuilder,
    source: AsyncIterable<Uint8Array>,
    at: { i: number; count: number; platform: string; dir: string; chain: string[]; expect: { blobDigest: string; blobSize: number; diffId: string; what: string } },
  ): Promise<RawBuiltLayer> {
    const { i, count, platform } = at;
    this.#emit({ type: 'layer', platform, index: i, count, phase: 'apply', bytes: 0, done: false });
    let applied = 0;
    return builder.build(source, {
      dir: at.dir,
      uuid: layerUuid(at.chain[i] as string),
      parentUuid: i > 0 ? layerUuid(at.chain[i - 1] as string) : undefined,
      zfile: { algorithm: this.#o.algorithm ?? 'lz4', blockSize: this.#o.blockSize ?? 4096 },
      expect: at.expect,
      last: i === count - 1,
      applyOptions: {
        onProgress: (p) => {
          applied = p.tarBytes;
          this.#emit({ type: 'layer', platform, index: i, count, phase: 'apply', bytes: p.tarBytes, done: false });
        },
        onWarning: (wn) => this.#emit({ type: 'warning', platform, index: i, entry: wn.entry, message: wn.message }),
        ...(this.#o.signal !== undefined ? { signal: this.#o.signal } : {}),
      },
      onCommit: () => {
        this.#emit({ type: 'layer', platform, index: i, count, phase: 'apply', bytes: applied, done: true });
        this.#emit({ type: 'layer', platform, index: i, count, phase: 'commit', bytes: 0, done: false });
      },
    });
  }

  /**
   * Layer sources from `first` on. From a registry, blobs are downloaded to files a few
   * layers ahead (verified); from a layout they are streamed and verified in passing.
   */
  #startDownloads(
    layers: readonly Descriptor[],
    at: { first: number; dirOf: (i: number) => string; platform: string },
  ): Array<() => Promise<AsyncIterable<Uint8Array>>> & { cancel(): Promise<void> } {
    const remote = this.#src.repoBlobUrl !== undefined;
    const ahead = Math.max(1, this.#o.downloadAhead ?? 3);
    const sem = new Semaphore(ahead);
    const pending: Array<Promise<unknown>> = [];
    const sources = layers.map((desc, i) => {
      if (i < at.first) return async (): Promise<AsyncIterable<Uint8Array>> => Readable.from([]);
      // Local blobs are verified by the applier (blobDigest), off this thread.
      if (!remote) return async (): Promise<AsyncIterable<Uint8Array>> => this.#src.blobStream(desc);
      const file = join(at.dirOf(i), 'layer.blob');
      const done = sem.run(async () => {
        this.#check();
        await mkdir(at.dirOf(i), { recursive: true });
        const progress = (n: number): void => this.#emit({ type: 'layer', platform: at.platform, index: i, count: layers.length, phase: 'download', bytes: n, total: desc.size, done: false });
        await pipeline(Readable.from(verified(await this.#src.blobStream(desc), desc, progress)), createWriteStream(file), ...(this.#o.signal ? [{ signal: this.#o.signal }] : []));
        this.#emit({ type: 'layer', platform: at.platform, index: i, count: layers.length, phase: 'download', bytes: desc.size, total: desc.size, done: true });
      });
      done.catch(() => {});
      pending.push(done);
      return async (): Promise<AsyncIterable<Uint8Array>> => {
        await done;
        return (async function* () {
          try {
            yield* createReadStream(file) as AsyncIterable<Uint8Array>;
          } finally {
            await rm(file, { force: true });
          }
        })();
      };
    });
    return Object.assign(sources, {
      cancel: async (): Promise<void> => {
        await Promise.allSettled(pending);
      },
    });
  }

  /** An endpoint for a cache row's location (cached per URL). */
  #endpointFor(row: BlobLocation): Promise<ImageEndpoint> {
    let ep = this.#endpoints.get(row.url);
    if (ep === undefined) {
      if (row.url.startsWith('oci:')) ep = openImageEndpoint(row.url, { access: this.#o.access as RemoteAccess });
      else if (this.#o.access === undefined) ep = Promise.reject(new UnsupportedError(`Cannot reach ${row.url}: no registry access given`));
      else {
        const { scheme, registry, repository } = parseRepoBlobUrl(row.url);
        ep = openImageEndpoint(`${registry}/${repository}`, { access: this.#o.access, plainHttp: scheme === 'http' ? [registry] : [] });
      }
      ep.catch(() => {});
      this.#endpoints.set(row.url, ep);
    }
    return ep;
  }

  #isDst(row: BlobLocation): boolean {
    return row.host === this.#dstLocation.host && row.repo === this.#dstLocation.repo;
  }

  /** A usable cache row for `key`, forgetting rows whose blob is gone. */
  async #lookup(key: Pick<CachedLayer, 'chainId' | 'recipe' | 'parentDigest'>): Promise<CachedLayer | undefined> {
    const cache = this.#o.cache as ConversionCache;
    for (const row of await cache.find(key, this.#dstLocation)) {
      const desc = this.#layerDescriptor(row.digest, row.size);
      let present: boolean;
      try {
        present = this.#isDst(row) ? await this.#dst.hasBlob(desc) : await (await this.#endpointFor(row)).hasBlob(desc);
      } catch {
        continue; // unreachable now: keep the row, try the next
      }
      if (present) return row;
      await cache.forget(row);
    }
    return undefined;
  }

  /** Downloads a reused layer's blob (from the target if it has it) to `file`, verified. */
  async #fetchCached(l: LayerOut, file: string): Promise<void> {
    const row = l.cached as CachedLayer;
    const ep = (await this.#dst.hasBlob(l.desc).catch(() => false)) ? this.#dst : await this.#endpointFor(row);
    await pipeline(Readable.from(verified(await ep.blobStream(l.desc), l.desc)), createWriteStream(file));
  }

  async #push(node: ManifestOut | IndexOut, tag: string | undefined): Promise<void> {
    if (node.kind === 'index') {
      for (const child of node.children) await this.#push(child, undefined);
    } else {
      for (const [i, l] of node.layers.entries()) await this.#pushLayer(l, { index: i, count: node.layers.length });
      await this.#pushBlob(node.config.desc, 'config', () => this.#dst.putBlob(node.config.desc, Readable.from([node.config.bytes])));
    }
    await this.#dst.putManifest(node.desc, node.bytes, tag);
    this.#emit({ type: 'pushed', kind: node.kind, digest: node.desc.digest, size: node.desc.size, how: 'uploaded' });
  }

  async #pushBlob(desc: Descriptor, kind: 'layer' | 'config', store: () => Promise<void>): Promise<'present' | 'uploaded'> {
    if (await this.#dst.hasBlob(desc)) {
      this.result.blobsPresent++;
      this.#emit({ type: 'pushed', kind, digest: desc.digest, size: desc.size, how: 'present' });
      return 'present';
    }
    await store();
    this.result.blobsUploaded++;
    this.result.bytesUploaded += desc.size;
    this.#emit({ type: 'pushed', kind, digest: desc.digest, size: desc.size, how: 'uploaded' });
    return 'uploaded';
  }

  async #pushLayer(l: LayerOut, at: { index: number; count: number }): Promise<void> {
    const progress = (n: number): void => this.#emit({ type: 'layer', platform: '', index: at.index, count: at.count, phase: 'push', bytes: n, total: l.desc.size, done: false });
    const row = l.cached;
    if (l.file !== undefined || row === undefined || this.#isDst(row)) {
      const file = l.file;
      await this.#pushBlob(l.desc, 'layer', async () => {
        // A blob built or fetched here was hashed from this very file: a layout links it.
        if (file !== undefined && this.#dst.putBlobFile !== undefined) return this.#dst.putBlobFile(l.desc, file);
        if (file !== undefined) return this.#dst.putBlob(l.desc, verified(createReadStream(file) as AsyncIterable<Uint8Array>, l.desc, progress));
        return this.#dst.putBlob(l.desc, verified(await (await this.#endpointFor(row as CachedLayer)).blobStream(l.desc), l.desc, progress));
      });
    } else if (await this.#dst.hasBlob(l.desc)) {
      this.result.blobsPresent++;
      this.#emit({ type: 'pushed', kind: 'layer', digest: l.desc.digest, size: l.desc.size, how: 'present' });
    } else {
      await this.#transfer(row, l.desc, progress);
    }
    this.#emit({ type: 'layer', platform: '', index: at.index, count: at.count, phase: 'push', bytes: l.desc.size, total: l.desc.size, done: true });
    if (l.chainId === '') return; // the base layer
    await this.#o.cache?.record({ ...this.#dstLocation, chainId: l.chainId, recipe: this.#recipe, parentDigest: l.parentDigest, digest: l.desc.digest, size: l.desc.size });
  }

  /** Copies a cached blob stored elsewhere, by cross-repository mount when on the same registry. */
  async #transfer(row: CachedLayer, desc: Descriptor, progress: (n: number) => void): Promise<void> {
    const open = async (): Promise<AsyncIterable<Uint8Array>> => verified(await (await this.#endpointFor(row)).blobStream(desc), desc, progress);
    const access = this.#o.access;
    if (access !== undefined && this.#dst.repoBlobUrl !== undefined && row.host === this.#dstLocation.host && !row.url.startsWith('oci:')) {
      const { scheme, registry, repository } = parseRepoBlobUrl(this.#dstLocation.url);
      const lazy = (async function* () {
        yield* await open();
      })();
      const r = await access.client(registry, scheme).pushBlob({ registry, repository }, lazy, { digest: desc.digest, mountFrom: [row.repo] });
      const how = r.status === 'mounted' ? 'mounted' : r.status === 'exists' ? 'present' : 'uploaded';
      if (how === 'mounted') this.result.blobsMounted++;
      else if (how === 'present') this.result.blobsPresent++;
      else {
        this.result.blobsUploaded++;
        this.result.bytesUploaded += desc.size;
      }
      this.#emit({ type: 'pushed', kind: 'layer', digest: desc.digest, size: desc.size, how });
      return;
    }
    await this.#dst.putBlob(desc, await open());
    this.result.blobsUploaded++;
    this.result.bytesUploaded += desc.size;
    this.#emit({ type: 'pushed', kind: 'layer', digest: desc.digest, size: desc.size, how: 'uploaded' });
  }
}

/** Converts the image `src` names into an overlaybd image in `dst` (see the module comment). */
export async function convertImage(src: ImageEndpoint, dst: ImageEndpoint, options: ConvertImageOptions): Promise<ConvertResult> {
  return new Conversion(src, dst, options).run();
}
