/**
 * Where images live: a registry repository or a local OCI layout, behind one small
 * interface so copy, config generation and conversion treat both alike
 * (`oci:DIR:TAG` is accepted wherever a registry reference is).
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import type { BlobReader } from '../io/blob-reader.ts';
import { DataCorruptionError } from '../io/errors.ts';
import type { RegistryClient } from '../registry/client.ts';
import { parseReference, type Reference } from '../registry/reference.ts';
import { OciLayout, isOciLayoutRef, parseOciLayoutRef } from './oci-layout.ts';
import type { Descriptor } from './descriptor.ts';
import { repoBlobUrl, type RemoteAccess } from './remote-access.ts';

export interface ImageEndpoint {
  /** Human-readable name (for messages). */
  readonly name: string;
  /** The descriptor the reference names (tag or digest). */
  resolve(): Promise<Descriptor>;
  /** Manifest or index bytes by digest, verified. */
  readManifest(desc: Descriptor): Promise<Uint8Array>;
  /** A whole blob as a stream (digest verified by the consumer or the source). */
  blobStream(desc: Descriptor): Promise<AsyncIterable<Uint8Array>>;
  /** A blob as a random-access reader. */
  openBlob(desc: Descriptor): Promise<BlobReader>;
  hasBlob(desc: Descriptor): Promise<boolean>;
  putBlob(desc: Descriptor, data: AsyncIterable<Uint8Array>): Promise<void>;
  /**
   * Optional: stores a local file already known to hold `desc` (its digest computed by
   * the caller from this file), without reading it when possible (a layout links it).
   */
  putBlobFile?(desc: Descriptor, path: string): Promise<void>;
  /** Stores a manifest/index; `tag` names the top-level one. */
  putManifest(desc: Descriptor, bytes: Uint8Array, tag?: string): Promise<void>;
  /** The tag this endpoint was addressed with, if any. */
  readonly tag: string | undefined;
  /** The `repoBlobUrl` of a registry endpoint (device configs), undefined for a layout. */
  readonly repoBlobUrl: string | undefined;
}

class LayoutEndpoint implements ImageEndpoint {
  readonly #layout: OciLayout;
  readonly #reference: string | undefined;
  readonly name: string;
  readonly repoBlobUrl = undefined;

  constructor(layout: OciLayout, reference: string | undefined, name: string) {
    this.#layout = layout;
    this.#reference = reference;
    this.name = name;
  }

  get tag(): string | undefined {
    return this.#reference?.startsWith('sha256:') === true ? undefined : this.#reference;
  }

  resolve(): Promise<Descriptor> {
    return this.#layout.resolve(this.#reference);
  }

  readManifest(desc: Descriptor): Promise<Uint8Array> {
    return this.#layout.readBlob(desc.digest);
  }

  async blobStream(desc: Descriptor): Promise<AsyncIterable<Uint8Array>> {
    // 1 MiB reads: a layer is tens of MiB, read once front to back (the default 64 KiB
    // cost the convertor a third of a second per 90 MB in read calls).
    return createReadStream(this.#layout.blobPath(desc.digest), { highWaterMark: 1 << 20 });
  }

  openBlob(desc: Descriptor): Promise<BlobReader> {
    return this.#layout.openBlob(desc.digest);
  }

  hasBlob(desc: Descriptor): Promise<boolean> {
    return this.#layout.hasBlob(desc.digest);
  }

  async putBlobFile(desc: Descriptor, path: string): Promise<void> {
    await this.#layout.linkBlobFile(path, desc.digest);
  }

  async putBlob(desc: Descriptor, data: AsyncIterable<Uint8Array>): Promise<void> {
    if (await this.#layout.hasBlob(desc.digest)) return;
    const path = this.#layout.blobPath(desc.digest);
    const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
    const hash = createHash('sha256');
    let size = 0;
    try {
      await pipeline(
        Readable.from(data),
        async function* (source: AsyncIterable<Uint8Array>) {
          for await (const chunk of source) {
            hash.update(chunk);
            size += chunk.length;
            yield chunk;
          }
        },
        createWriteStream(tmp),
      );
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== desc.digest || size !== desc.size) {
        throw new DataCorruptionError(`Cannot store blob ${desc.digest}: received ${size} bytes hashing to ${got}`);
      }
      await rename(tmp, path);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  async putManifest(desc: Descriptor, bytes: Uint8Array, tag?: string): Promise<void> {
    await this.#layout.writeBlob(bytes);
    if (tag !== undefined) await this.#layout.tag({ mediaType: desc.mediaType, digest: desc.digest, size: desc.size }, tag);
  }
}

class RegistryEndpoint implements ImageEndpoint {
  readonly #client: RegistryClient;
  readonly #ref: Reference;
  readonly #access: RemoteAccess;
  readonly name: string;
  readonly repoBlobUrl: string;

  constructor(access: RemoteAccess, ref: Reference, plainHttp: boolean) {
    this.#access = access;
    this.#client = access.client(ref.registry, plainHttp ? 'http' : 'https');
    this.#ref = ref;
    this.name = `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
    this.repoBlobUrl = repoBlobUrl(ref.registry, ref.repository, plainHttp);
  }

  get tag(): string | undefined {
    return this.#ref.tag;
  }

  async resolve(): Promise<Descriptor> {
    const m = await this.#client.getManifest(this.#ref);
    return { mediaType: m.mediaType, digest: m.digest, size: m.size };
  }

  async readManifest(desc: Descriptor): Promise<Uint8Array> {
    return (await this.#client.getManifest({ registry: this.#ref.registry, repository: this.#ref.repository, digest: desc.digest })).bytes;
  }

  async blobStream(desc: Descriptor): Promise<AsyncIterable<Uint8Array>> {
    const stream = await this.#client.getBlob(this.#ref, desc.digest, { size: desc.size });
    return stream as unknown as AsyncIterable<Uint8Array>;
  }

  openBlob(desc: Descriptor): Promise<BlobReader> {
    return this.#access.openBlob({ repoBlobUrl: this.repoBlobUrl, digest: desc.digest, size: desc.size });
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    return (await this.#client.headBlob(this.#ref, desc.digest)) !== undefined;
  }

  async putBlob(desc: Descriptor, data: AsyncIterable<Uint8Array>): Promise<void> {
    await this.#client.pushBlob(this.#ref, data, { digest: desc.digest });
  }

  async putManifest(desc: Descriptor, bytes: Uint8Array, tag?: string): Promise<void> {
    const base = { registry: this.#ref.registry, repository: this.#ref.repository };
    await this.#client.pushManifest(tag !== undefined ? { ...base, tag } : { ...base, digest: desc.digest }, { bytes, mediaType: desc.mediaType });
  }
}

/**
 * Opens `ref`: `oci:DIR[:TAG]` (created on demand when `create`), else a registry
 * reference reached through `access` (plain HTTP when `plainHttp` lists its host).
 */
export async function openImageEndpoint(
  ref: string,
  options: { access: RemoteAccess; create?: boolean; plainHttp?: readonly string[] },
): Promise<ImageEndpoint> {
  if (isOciLayoutRef(ref)) {
    const { dir, reference } = parseOciLayoutRef(ref);
    const layout = options.create === true ? await OciLayout.openOrCreate(dir) : await OciLayout.open(dir);
    return new LayoutEndpoint(layout, reference, ref);
  }
  const parsed = parseReference(ref);
  return new RegistryEndpoint(options.access, parsed, (options.plainHttp ?? []).includes(parsed.registry));
}
