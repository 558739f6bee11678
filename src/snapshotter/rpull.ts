/**
 * `rpull`: remote pull of an overlaybd image into containerd (upstream's `ctr rpull`),
 * through containerd's own gRPC API. No layer data is fetched: only the index (if any),
 * the manifest and the config travel, and every layer becomes a remote snapshot that the
 * overlaybd snapshotter commits at Prepare time.
 *
 * Steps, all under one containerd lease (so nothing is collected half-way; the lease
 * expires after an hour should rpull die before deleting it):
 *
 * 1. Resolve the reference with our registry client (platform = this host).
 * 2. Write index, manifest and config into containerd's content store (stream Write:
 *    stat / write / commit with expected digest and size), labelled as containerd's
 *    fetcher labels them: `containerd.io/gc.ref.content.m.<i>` on the index,
 *    `containerd.io/gc.ref.content.config` and `containerd.io/gc.ref.content.l.<i>` on
 *    the manifest, `containerd.io/distribution.source.<registry>` on all. Runs
 *    alongside step 3, which is on the container's start path (attach at pull).
 * 3. For each layer bottom-up, unless containerd already has its chain ID snapshot:
 *    Prepare `extract-<random>-<chainID>` with parent = previous chain ID and labels
 *    `containerd.io/snapshot.ref` = chain ID, `containerd.io/snapshot/image-ref` = ref
 *    and the layer's `containerd.io/snapshot/*` annotations (overlaybd blob digest and
 *    size among them). The overlaybd snapshotter commits the remote layer under the
 *    chain ID and answers AlreadyExists: that is success. A Prepare that succeeds means
 *    the snapshotter treated the layer as a plain one (it would need the layer data
 *    unpacked): rpull removes that snapshot and fails — it is for overlaybd images only.
 *    Exception: an acceleration (trace) layer (`…/acceleration-layer: yes`, image-format.md
 *    §9) is Prepared as a bind of its `fs` directory, as containerd's unpacker sees it:
 *    rpull writes the layer's one file `trace` there (the blob, a small tar, is fetched
 *    in step 1) and commits the snapshot under the chain ID.
 * 4. Label the config `containerd.io/gc.ref.snapshot.<snapshotter>` = top chain ID, as
 *    containerd's unpacker does: it keeps the snapshots alive and `ctr run` (whose
 *    `IsUnpacked` stats the top chain ID in the snapshotter) sees the image unpacked.
 * 5. Create the image record (or replace its target) — last, so a failed rpull leaves
 *    no image that cannot run.
 *
 * @example
 * ```ts
 * const r = await rpull('registry.example/obd/redis:6.2.1_obd', {
 *   containerdAddress: '/run/containerd/containerd.sock',
 *   registry: { plainHttp: ['registry.example'] },
 * });
 * // r.layers[0].status === 'committed'
 * ```
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { debuglog } from 'node:util';
import { AlreadyExistsError, DataCorruptionError, FailedPreconditionError, NotFoundError } from '../io/errors.ts';
import { RegistryClient, type RegistryClientOptions } from '../registry/client.ts';
import { warmHttp } from '../registry/node-transport.ts';
import type { Platform } from '../registry/platform.ts';
import { formatReference, parseReference, type Reference } from '../registry/reference.ts';
import { MemoryReader } from '../io/memory-reader.ts';
import { readBytes } from '../io/blob-reader.ts';
import { openTarPayload } from '../formats/tar/wrapper.ts';
import { LABELS } from './labels.ts';
import type { ContainerdDescriptor } from './_containerd-client.ts';
import { chainIds, layerSnapshotLabels, parseDiffIds, parseManifest } from './_containerd-image.ts';

const log = debuglog('obd');

/** containerd's default socket. */
export const DEFAULT_CONTAINERD_ADDRESS = '/run/containerd/containerd.sock';
/** Largest image config rpull reads (configs are a few KiB). */
const MAX_CONFIG_BYTES = 4 * 1024 * 1024;
const LEASE_EXPIRY_MS = 60 * 60 * 1000;
/** Largest acceleration (trace) layer rpull fetches. */
const MAX_TRACE_LAYER_BYTES = 64 * 1024 * 1024;

/** Options of {@link rpull}. */
export interface RpullOptions {
  /** containerd's gRPC socket (default `/run/containerd/containerd.sock`). */
  containerdAddress?: string;
  /** containerd namespace (default `default`). */
  namespace?: string;
  /** Snapshotter name in containerd (default `overlaybd`). */
  snapshotter?: string;
  /** Registry client settings: credentials, plain-HTTP and insecure hosts, mirrors. */
  registry?: RegistryClientOptions;
  /** Platform to pick from an index (default: this host's). */
  platform?: Platform;
  /** Deadline of each containerd call in ms (default 60000). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What one layer's pull did. */
export interface RpullLayer {
  digest: string;
  size: number;
  chainId: string;
  /** `committed`: the snapshotter committed it now; `present`: containerd already had it. */
  status: 'committed' | 'present';
}

/** Result of {@link rpull}. */
export interface RpullResult {
  /** The image name in containerd (the normalised reference). */
  name: string;
  /** The image record's target (index or manifest). */
  target: ContainerdDescriptor;
  manifestDigest: string;
  configDigest: string;
  /** Chain ID of the top layer: the snapshot a container's rootfs is prepared on. */
  chainId: string;
  layers: RpullLayer[];
  /** `created` or `updated` image record. */
  image: 'created' | 'updated';
  /** Bytes read from the registry (index, manifest and config; never layers). */
  bytesFetched: number;
}

const OVERLAYBD_BLOB_DIGEST = LABELS.blobDigest;

function randomId(): string {
  return randomBytes(8).toString('hex');
}

async function readAll(stream: ReadableStream<Uint8Array>, limit: number, what: string): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let n = 0;
  for await (const c of stream) {
    n += c.length;
    if (n > limit) {
      await stream.cancel().catch(() => undefined);
      throw new DataCorruptionError(`Cannot read ${what}: larger than ${limit} bytes`);
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

/** The containerd gRPC clients (grpc-js, proto-loader: ~120 ms to load), loaded on first need. */
function grpcClients() {
  return Promise.all([import('./_containerd-client.ts'), import('./grpc-client.ts')]);
}

/**
 * Readies a long-running process that pulls later (the snapshotter daemon): loads the
 * containerd gRPC client and its service definitions, generates the message codecs, and
 * loads the HTTP client's header class; all of it otherwise runs on the first pull's path.
 */
export async function preloadRpull(): Promise<void> {
  const [{ warmContainerdClient }] = await grpcClients();
  warmContainerdClient();
  warmHttp();
}

/** Pulls `ref` into containerd without fetching layer data. See the module comment. */
export async function rpull(ref: string, options: RpullOptions = {}): Promise<RpullResult> {
  const parsed: Reference = parseReference(ref);
  const name = formatReference(parsed);
  const snapshotterName = options.snapshotter ?? 'overlaybd';
  const address = options.containerdAddress ?? DEFAULT_CONTAINERD_ADDRESS;
  const signal = options.signal === undefined ? {} : { signal: options.signal };
  // The gRPC modules load while the registry answers.
  const grpcModules = grpcClients();
  void grpcModules.catch(() => undefined);
  // containerd's side starts at once too: the lease needs nothing from the registry.
  const leasing = (async () => {
    const [{ ContainerdClient }] = await grpcModules;
    const ctd = new ContainerdClient(address, { namespace: options.namespace ?? 'default', ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) });
    try {
      const leaseId = await ctd.createLease(`obd-rpull-${randomId()}`, { 'containerd.io/gc.expire': new Date(Date.now() + LEASE_EXPIRY_MS).toISOString() });
      return { ctd, leaseId };
    } catch (e) {
      ctd.close();
      throw e;
    }
  })();
  void leasing.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
  // If the registry part fails first: drop the lease once it exists.
  const abandon = async (): Promise<void> => {
    const held = await leasing.catch(() => undefined);
    if (held === undefined) return;
    await held.ctd.deleteLease(held.leaseId).catch((e: unknown) => log('rpull: cannot delete lease %s: %s', held.leaseId, String(e)));
    held.ctd.close();
  };

  /** Registry part: the manifest, config and traces, checked; nothing in containerd yet. */
  const resolveAll = async () => {
    // 1. Resolve (registry only).
    const registry = new RegistryClient(options.registry ?? {});
    let resolved;
    let configBytes: Uint8Array;
    let manifest: ReturnType<typeof parseManifest>;
    const traceLayers = new Map<string, Uint8Array>();
    try {
      resolved = await registry.resolveImage(parsed, { ...signal, ...(options.platform === undefined ? {} : { platform: options.platform }) });
      manifest = parseManifest(resolved.manifest.bytes, resolved.manifest.digest);
      const m = manifest;
      if (m.config.size > MAX_CONFIG_BYTES) throw new DataCorruptionError(`Cannot pull ${name}: config ${m.config.digest} claims ${m.config.size} bytes`);
      // The config and the acceleration layers' traces, side by side (one round trip).
      const accelerated = new Map(m.layers.filter((l) => l.annotations[LABELS.accelerationLayer] === 'yes').map((l) => [l.digest, l]));
      const traces = [...accelerated.values()].map(async (l) => {
        const tar = await readAll(await registry.getBlob(parsed, l.digest, { ...signal, size: l.size }), MAX_TRACE_LAYER_BYTES, `acceleration layer ${l.digest}`);
        const payload = await openTarPayload(new MemoryReader(tar));
        if (payload === null) throw new DataCorruptionError(`Cannot pull ${name}: acceleration layer ${l.digest} is not a tar`);
        traceLayers.set(l.digest, await readBytes(payload, 0, payload.size, `trace of ${l.digest}`));
      });
      const config = (async () => readAll(await registry.getBlob(parsed, m.config.digest, { ...signal, size: m.config.size }), MAX_CONFIG_BYTES, `config ${m.config.digest}`))();
      const settled = await Promise.allSettled([config, ...traces]);
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed !== undefined) throw failed.reason;
      configBytes = await config;
    } finally {
      await registry.close();
    }
    const diffIds = parseDiffIds(configBytes, manifest.config.digest);
    if (diffIds.length !== manifest.layers.length) {
      throw new DataCorruptionError(`Cannot pull ${name}: the manifest lists ${manifest.layers.length} layers, the config ${diffIds.length} diff IDs`);
    }
    const plain = manifest.layers.findIndex((l) => l.annotations[OVERLAYBD_BLOB_DIGEST] === undefined);
    if (plain >= 0) {
      throw new FailedPreconditionError(
        `Cannot pull ${name} remotely: layer ${plain} (${manifest.layers[plain]?.digest}) has no ${OVERLAYBD_BLOB_DIGEST} annotation (not an overlaybd image; use a normal pull)`,
      );
    }
    const chains = chainIds(diffIds);
    const topChain = chains[chains.length - 1] ?? '';
    if (topChain === '') throw new DataCorruptionError(`Cannot pull ${name}: the image has no layers`);

    // The index is the image target only when the manifest is its direct child (nested indexes: the manifest).
    const index = resolved.index;
    const indexPos =
      index === undefined ? -1 : ((JSON.parse(new TextDecoder().decode(index.bytes)) as { manifests: { digest: string }[] }).manifests ?? []).findIndex((e) => e.digest === resolved.manifest.digest);
    const target: ContainerdDescriptor =
      index !== undefined && indexPos >= 0
        ? { mediaType: index.mediaType, digest: index.digest, size: index.size }
        : { mediaType: resolved.manifest.mediaType, digest: resolved.manifest.digest, size: resolved.manifest.size };
    const source = { [`containerd.io/distribution.source.${parsed.registry}`]: parsed.repository };

    return { resolved, configBytes, traceLayers, manifest, chains, topChain, index, indexPos, target, source };
  };
  let r: Awaited<ReturnType<typeof resolveAll>>;
  try {
    r = await resolveAll();
  } catch (e) {
    await abandon();
    throw e;
  }
  const { resolved, configBytes, traceLayers, manifest, chains, topChain, index, indexPos, target, source } = r;
  const [, { createSnapshotterClient }] = await grpcModules;
  const { ctd, leaseId } = await leasing;
  try {
    ctd.lease = leaseId;
    // 2. Content and 3. remote snapshots, side by side: the snapshots come first on the
    // container's start path (the snapshotter may attach an accelerated image's device
    // at its top layer's Commit), the content records only need to exist at step 4.
    const layers: RpullLayer[] = [];
    const writeContent = async (): Promise<void> => {
      if (index !== undefined && indexPos >= 0) {
        await ctd.writeContent({
          ref: `index-${index.digest}`,
          digest: index.digest,
          bytes: index.bytes,
          labels: { ...source, [`containerd.io/gc.ref.content.m.${indexPos}`]: resolved.manifest.digest },
        });
      }
      const manifestLabels: Record<string, string> = { ...source, 'containerd.io/gc.ref.content.config': manifest.config.digest };
      manifest.layers.forEach((l, i) => {
        manifestLabels[`containerd.io/gc.ref.content.l.${i}`] = l.digest;
      });
      await ctd.writeContent({ ref: `manifest-${resolved.manifest.digest}`, digest: resolved.manifest.digest, bytes: resolved.manifest.bytes, labels: manifestLabels });
      await ctd.writeContent({ ref: `config-${manifest.config.digest}`, digest: manifest.config.digest, bytes: configBytes, labels: source });
    };
    const pullSnapshots = async (): Promise<void> => {
      const sn = createSnapshotterClient(address, { name: snapshotterName, metadata: ctd.metadata(), ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) });
      try {
        // Which chain IDs containerd has: asked all at once (one round trip, not one per layer).
        const present = await Promise.all(
          manifest.layers.map((_, i) =>
            sn.stat(chains[i] as string).then(
              () => true,
              (e: unknown) => {
                if (e instanceof NotFoundError) return false;
                throw e;
              },
            ),
          ),
        );
        for (const [i, layer] of manifest.layers.entries()) {
          const chainId = chains[i] as string;
          const parent = i === 0 ? '' : (chains[i - 1] as string);
          const base = { digest: layer.digest, size: layer.size, chainId };
          if (present[i] === true) {
            layers.push({ ...base, status: 'present' });
            continue;
          }
          const key = `extract-${randomId()}-${chainId}`;
          const labels = layerSnapshotLabels(layer, { chainId, imageRef: name });
          let mounts;
          try {
            mounts = await sn.prepare(key, parent, { labels });
          } catch (e) {
            if (!(e instanceof AlreadyExistsError)) throw e;
            const info = await sn.stat(chainId);
            if (info.kind !== 'committed') throw new FailedPreconditionError(`Cannot pull layer ${i} of ${name}: snapshot ${chainId} exists but is ${info.kind}`);
            log('rpull: layer %d (%s) is remote snapshot %s', i, layer.digest, chainId);
            layers.push({ ...base, status: 'committed' });
            continue;
          }
          const trace = traceLayers.get(layer.digest);
          const fs = mounts[0];
          if (trace !== undefined && mounts.length === 1 && fs?.type === 'bind') {
            await writeFile(join(fs.source, 'trace'), trace, { mode: 0o444 });
            await sn.commit(chainId, key, { labels });
            log('rpull: acceleration layer %d (%s) committed as %s', i, layer.digest, chainId);
            layers.push({ ...base, status: 'committed' });
            continue;
          }
          await sn.remove(key).catch((e: unknown) => log('rpull: cannot remove snapshot %s: %s', key, String(e)));
          throw new FailedPreconditionError(
            `Cannot pull layer ${i} (${layer.digest}) of ${name} remotely: snapshotter ${snapshotterName} prepared it as a plain layer instead of committing a remote overlaybd layer (is it the overlaybd snapshotter?)`,
          );
        }
      } finally {
        await sn.close();
      }
    };
    const settled = await Promise.allSettled([pullSnapshots(), writeContent()]);
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed !== undefined) throw failed.reason;

    // 4. Keep the snapshots with the config, as containerd's unpacker does.
    await ctd.setContentLabels(manifest.config.digest, { [`containerd.io/gc.ref.snapshot.${snapshotterName}`]: topChain });
    // 5. The image record.
    const image = await ctd.putImage({ name, labels: {}, target });
    const bytesFetched = (index?.size ?? 0) + resolved.manifest.size + configBytes.length;
    return { name, target, manifestDigest: resolved.manifest.digest, configDigest: manifest.config.digest, chainId: topChain, layers, image, bytesFetched };
  } finally {
    ctd.lease = undefined;
    await ctd.deleteLease(leaseId).catch((e: unknown) => log('rpull: cannot delete lease %s: %s', leaseId, String(e)));
    ctd.close();
  }
}
