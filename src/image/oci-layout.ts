/**
 * A local OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`): the embedded
 * default store, addressed as `oci:DIR:TAG` wherever a registry reference is accepted.
 * Blobs are verified against their digest when read whole; index.json is replaced
 * atomically.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, stat, writeFile, copyFile, link, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { openFileReader, type FileReader } from '../io/file-reader.ts';
import { DataCorruptionError, InvalidArgumentError, NotFoundError } from '../io/errors.ts';
import { ANNOTATIONS, isDigest, MEDIA_TYPES, type Descriptor, type Index } from './descriptor.ts';

export interface OciLayoutRef {
  dir: string;
  /** A tag (`org.opencontainers.image.ref.name`) or a digest. */
  reference: string | undefined;
}

/** Parses `oci:DIR[:TAG|@DIGEST]`. */
export function parseOciLayoutRef(ref: string): OciLayoutRef {
  if (!ref.startsWith('oci:')) throw new InvalidArgumentError(`Invalid OCI layout reference '${ref}': expected oci:DIR[:TAG]`);
  const rest = ref.slice(4);
  const at = rest.lastIndexOf('@');
  if (at > 0 && isDigest(rest.slice(at + 1))) return { dir: rest.slice(0, at), reference: rest.slice(at + 1) };
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/') && colon > 0) return { dir: rest.slice(0, colon), reference: rest.slice(colon + 1) };
  if (rest === '') throw new InvalidArgumentError(`Invalid OCI layout reference '${ref}': no directory`);
  return { dir: rest, reference: undefined };
}

export function isOciLayoutRef(ref: string): boolean {
  return ref.startsWith('oci:');
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

export class OciLayout {
  readonly dir: string;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Opens an existing layout. */
  static async open(dir: string): Promise<OciLayout> {
    let marker: string;
    try {
      marker = await readFile(join(dir, 'oci-layout'), 'utf8');
    } catch (e) {
      throw new NotFoundError(`Cannot open OCI layout ${dir}: no oci-layout file`, { cause: e });
    }
    let version: unknown;
    try {
      version = (JSON.parse(marker) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    } catch (e) {
      throw new DataCorruptionError(`Cannot open OCI layout ${dir}: oci-layout is not JSON`, { cause: e });
    }
    if (version !== '1.0.0') throw new DataCorruptionError(`Cannot open OCI layout ${dir}: imageLayoutVersion ${String(version)}`);
    return new OciLayout(dir);
  }

  /** Opens `dir`, creating an empty layout when it does not exist. */
  static async openOrCreate(dir: string): Promise<OciLayout> {
    try {
      return await OciLayout.open(dir);
    } catch (e) {
      if (!(e instanceof NotFoundError)) throw e;
    }
    await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
    await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
    const layout = new OciLayout(dir);
    await layout.#writeIndex({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [] });
    return layout;
  }

  blobPath(digest: string): string {
    if (!isDigest(digest)) throw new InvalidArgumentError(`Invalid digest '${digest}'`);
    return join(this.dir, 'blobs', 'sha256', digest.slice(7));
  }

  async index(): Promise<Index> {
    const text = await readFile(join(this.dir, 'index.json'), 'utf8');
    try {
      return JSON.parse(text) as Index;
    } catch (e) {
      throw new DataCorruptionError(`Cannot read ${join(this.dir, 'index.json')}: not JSON`, { cause: e });
    }
  }

  /** The descriptor named by a tag or digest (the only one when `reference` is undefined). */
  async resolve(reference: string | undefined): Promise<Descriptor> {
    const idx = await this.index();
    const found =
      reference === undefined
        ? idx.manifests.length === 1
          ? idx.manifests[0]
          : undefined
        : idx.manifests.find((d) => d.annotations?.[ANNOTATIONS.refName] === reference || d.digest === reference);
    if (found !== undefined) return found;
    if (reference !== undefined && isDigest(reference)) {
      const st = await stat(this.blobPath(reference)).catch(() => undefined);
      if (st !== undefined) return { mediaType: '', digest: reference, size: st.size };
    }
    const names = idx.manifests.map((d) => d.annotations?.[ANNOTATIONS.refName]).filter((n) => n !== undefined);
    throw new NotFoundError(
      reference === undefined
        ? `Cannot resolve an image in ${this.dir}: ${idx.manifests.length} images, name one (${names.join(', ')})`
        : `Cannot resolve '${reference}' in ${this.dir}: known names are ${names.join(', ') || 'none'}`,
    );
  }

  async hasBlob(digest: string): Promise<boolean> {
    return (await stat(this.blobPath(digest)).catch(() => undefined)) !== undefined;
  }

  /** Reads a whole blob and checks its digest. */
  async readBlob(digest: string): Promise<Uint8Array> {
    let bytes: Uint8Array;
    try {
      bytes = await readFile(this.blobPath(digest));
    } catch (e) {
      throw new NotFoundError(`Cannot read blob ${digest} from ${this.dir}: not present`, { cause: e });
    }
    const got = `sha256:${sha256Hex(bytes)}`;
    if (got !== digest) throw new DataCorruptionError(`Cannot read blob ${digest} from ${this.dir}: content hashes to ${got}`);
    return bytes;
  }

  async openBlob(digest: string): Promise<FileReader> {
    return openFileReader(this.blobPath(digest));
  }

  /** Stores bytes as a blob; returns its digest. */
  async writeBlob(bytes: Uint8Array): Promise<string> {
    const digest = `sha256:${sha256Hex(bytes)}`;
    if (!(await this.hasBlob(digest))) await this.#atomicWrite(this.blobPath(digest), bytes);
    return digest;
  }

  /** Stores a file as the blob `digest` (the caller vouches for the digest). */
  async importBlobFile(path: string, digest: string): Promise<void> {
    if (await this.hasBlob(digest)) return;
    const tmp = `${this.blobPath(digest)}.${randomBytes(4).toString('hex')}.tmp`;
    await copyFile(path, tmp);
    await rename(tmp, this.blobPath(digest));
  }

  /**
   * As {@link OciLayout.importBlobFile}, but hard-links the file when it lies on the same
   * file system (no copy; the file must not change afterwards), else copies it.
   */
  async linkBlobFile(path: string, digest: string): Promise<void> {
    if (await this.hasBlob(digest)) return;
    const tmp = `${this.blobPath(digest)}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await link(path, tmp);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EXDEV' && code !== 'EPERM' && code !== 'ENOTSUP') throw e;
      await copyFile(path, tmp);
    }
    await rename(tmp, this.blobPath(digest));
  }

  /** Adds (or replaces) the index entry named `name`. */
  async tag(desc: Descriptor, name: string): Promise<void> {
    const idx = await this.index();
    const entry: Descriptor = { ...desc, annotations: { ...(desc.annotations ?? {}), [ANNOTATIONS.refName]: name } };
    idx.manifests = idx.manifests.filter((d) => d.annotations?.[ANNOTATIONS.refName] !== name);
    idx.manifests.push(entry);
    await this.#writeIndex(idx);
  }

  async #writeIndex(idx: Index): Promise<void> {
    await this.#atomicWrite(join(this.dir, 'index.json'), new TextEncoder().encode(JSON.stringify(idx)));
  }

  async #atomicWrite(path: string, bytes: Uint8Array): Promise<void> {
    const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await writeFile(tmp, bytes);
      await rename(tmp, path);
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }
}
