/**
 * A streaming tar reader for OCI layers: ustar, GNU long names/links (`L`/`K`), PAX
 * extended headers (`path`, `linkpath`, `size`, `uid`, `gid`, `mtime`,
 * `SCHILY.xattr.*`; global headers are skipped), v7 headers. It pulls from an async
 * byte stream as the consumer asks, so a slow consumer slows the source (no buffering
 * beyond one source chunk), and reports truncation and oversized metadata with the
 * entry and the stream offset (erofs-and-fs.md §2.2).
 *
 * Usage: `next()` returns the next entry (skipping whatever the caller left unread of
 * the previous one); `body()` streams the current entry's data.
 *
 * @example
 * ```ts
 * const tar = new TarReader(stream);
 * for (let e = await tar.next(); e !== undefined; e = await tar.next()) {
 *   if (e.type === 'file') for await (const chunk of tar.body()) sink.write(chunk);
 * }
 * ```
 */
import { DataCorruptionError, UnsupportedError } from '../io/errors.ts';
import { decodePaxRecords, decodeTarHeader, isZeroBlock, TAR_BLOCK, TYPE, type TarHeader } from './tar-header.ts';

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'directory' | 'fifo' | 'socket';

/** One archive member with PAX/GNU overrides applied. */
export interface TarEntry {
  /** Member name as stored (not normalised). */
  path: string;
  /** Target of a symlink or hard link. */
  linkpath: string;
  type: TarEntryType;
  /** Permission bits including setuid, setgid and sticky (`mode & 0o7777`). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes of data following the header. */
  size: number;
  /** Modification time in seconds since the epoch (fractional with a PAX `mtime`). */
  mtime: number;
  devmajor: number;
  devminor: number;
  /** Extended attributes from `SCHILY.xattr.<name>` records, values as bytes. */
  xattrs: Map<string, Uint8Array>;
  /** Offset of the entry's (first) header in the uncompressed stream. */
  offset: number;
}

export interface TarReaderOptions {
  /** Largest PAX or GNU long-name data loaded into memory (default 1 MiB). */
  maxMetadataSize?: number;
}

const S_IFMT = 0o170000;
const S_IFSOCK = 0o140000;
const S_IFLNK = 0o120000;
const S_IFREG = 0o100000;
const S_IFBLK = 0o060000;
const S_IFDIR = 0o040000;
const S_IFCHR = 0o020000;
const S_IFIFO = 0o010000;

const XATTR_PREFIX = 'SCHILY.xattr.';
const EMPTY = new Uint8Array(0);
const dec = new TextDecoder();

function cString(b: Uint8Array): string {
  const nul = b.indexOf(0);
  return dec.decode(nul < 0 ? b : b.subarray(0, nul));
}

/** The entry type from the type flag, falling back to the mode's type bits for regular flags. */
function entryType(h: TarHeader, name: string): TarEntryType | undefined {
  switch (h.typeflag) {
    case TYPE.directory:
      return 'directory';
    case TYPE.hardlink:
      return 'hardlink';
    case TYPE.symlink:
      return 'symlink';
    case TYPE.char:
      return 'char';
    case TYPE.block:
      return 'block';
    case TYPE.fifo:
      return 'fifo';
    case TYPE.regular:
    case TYPE.regularOld:
    case TYPE.contiguous:
      switch (h.mode & S_IFMT) {
        case S_IFDIR:
          return 'directory';
        case S_IFLNK:
          return 'symlink';
        case S_IFSOCK:
          return 'socket';
        case S_IFCHR:
          return 'char';
        case S_IFBLK:
          return 'block';
        case S_IFIFO:
          return 'fifo';
        case S_IFREG:
        case 0:
          return h.typeflag === TYPE.regularOld && name.endsWith('/') ? 'directory' : 'file';
        default:
          return 'file';
      }
    default:
      return undefined;
  }
}

/** Pulls bytes from an async chunk iterator, tracking the stream position. */
class ByteSource {
  readonly #it: AsyncIterator<Uint8Array>;
  #chunk: Uint8Array = EMPTY;
  #at = 0;
  #done = false;
  /** Bytes consumed so far. */
  position = 0;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#it = source[Symbol.asyncIterator]();
  }

  async #fill(): Promise<boolean> {
    while (this.#at >= this.#chunk.length) {
      if (this.#done) return false;
      const r = await this.#it.next();
      if (r.done === true) {
        this.#done = true;
        return false;
      }
      this.#chunk = r.value;
      this.#at = 0;
    }
    return true;
  }

  /** Up to `n` bytes, fewer only at the end of the stream. */
  async read(n: number): Promise<Uint8Array> {
    if (!(await this.#fill())) return EMPTY;
    if (this.#chunk.length - this.#at >= n) {
      const out = this.#chunk.subarray(this.#at, this.#at + n);
      this.#at += n;
      this.position += n;
      return out;
    }
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n && (await this.#fill())) {
      const take = Math.min(n - got, this.#chunk.length - this.#at);
      out.set(this.#chunk.subarray(this.#at, this.#at + take), got);
      this.#at += take;
      got += take;
      this.position += take;
    }
    return got === n ? out : out.subarray(0, got);
  }

  /** Yields up to `n` bytes as views of the source chunks; stops early at the end of the stream. */
  async *stream(n: number): AsyncGenerator<Uint8Array> {
    let left = n;
    while (left > 0 && (await this.#fill())) {
      const take = Math.min(left, this.#chunk.length - this.#at);
      const view = this.#chunk.subarray(this.#at, this.#at + take);
      this.#at += take;
      this.position += take;
      left -= take;
      yield view;
    }
  }

  /** Skips up to `n` bytes; returns how many were skipped. */
  async skip(n: number): Promise<number> {
    let done = 0;
    for await (const piece of this.stream(n)) done += piece.length;
    return done;
  }

  /** Reads and discards everything left; returns the byte count. */
  async drain(): Promise<number> {
    let n = this.#chunk.length - this.#at;
    this.position += n;
    this.#at = this.#chunk.length;
    while (await this.#fill()) {
      n += this.#chunk.length;
      this.position += this.#chunk.length;
      this.#at = this.#chunk.length;
    }
    return n;
  }
}

/** Reads a tar stream entry by entry. */
export class TarReader {
  readonly #src: ByteSource;
  readonly #maxMeta: number;
  /** The current entry, its unread data bytes and its padding. */
  #current: TarEntry | undefined;
  #left = 0;
  #padding = 0;
  #ended = false;

  constructor(source: AsyncIterable<Uint8Array>, options: TarReaderOptions = {}) {
    this.#src = new ByteSource(source);
    this.#maxMeta = options.maxMetadataSize ?? 1 << 20;
  }

  /** Bytes of the uncompressed stream consumed so far. */
  get position(): number {
    return this.#src.position;
  }

  async #skipRest(): Promise<void> {
    const want = this.#left + this.#padding;
    if (want === 0) return;
    const got = await this.#src.skip(want);
    const entry = this.#current as TarEntry;
    if (got < this.#left) throw this.#truncated(entry, entry.size - this.#left + got);
    this.#left = 0;
    this.#padding = 0;
  }

  #truncated(entry: TarEntry, got: number): DataCorruptionError {
    return new DataCorruptionError(
      `Cannot read tar entry ${entry.path} (at byte ${entry.offset}): the stream ends after ${got} of its ${entry.size} data bytes`,
    );
  }

  async #readMeta(h: TarHeader, offset: number): Promise<Uint8Array> {
    const kind = h.typeflag === TYPE.paxExtended || h.typeflag === TYPE.paxGlobal ? 'PAX header' : 'GNU long name';
    if (h.size > this.#maxMeta) {
      throw new DataCorruptionError(`Cannot read tar entry at byte ${offset}: its ${kind} declares ${h.size} bytes, more than the ${this.#maxMeta}-byte limit`);
    }
    const data = await this.#src.read(h.size);
    const pad = (TAR_BLOCK - (h.size % TAR_BLOCK)) % TAR_BLOCK;
    if (data.length < h.size || (await this.#src.skip(pad)) < pad) {
      throw new DataCorruptionError(`Cannot read tar entry at byte ${offset}: the stream ends inside its ${kind}`);
    }
    return data;
  }

  /** The next entry, or undefined at the end of the archive. */
  async next(): Promise<TarEntry | undefined> {
    if (this.#ended) return undefined;
    await this.#skipRest();
    this.#current = undefined;
    let pax = new Map<string, Uint8Array>();
    let longName: string | undefined;
    let longLink: string | undefined;
    let first: number | undefined;
    let zeros = 0;
    for (;;) {
      const offset = this.#src.position;
      const block = await this.#src.read(TAR_BLOCK);
      if (block.length === 0 && first === undefined) {
        this.#ended = true;
        return undefined;
      }
      if (block.length < TAR_BLOCK) {
        throw new DataCorruptionError(`Cannot read tar stream: it ends inside a header block at byte ${offset}`);
      }
      if (isZeroBlock(block)) {
        if (first !== undefined) throw new DataCorruptionError(`Cannot read tar entry at byte ${first}: an extended header is followed by a zero block`);
        if (++zeros === 2) {
          this.#ended = true;
          return undefined;
        }
        continue;
      }
      first ??= offset;
      let h: TarHeader;
      try {
        h = decodeTarHeader(block);
      } catch (e) {
        throw new DataCorruptionError(`Cannot read tar header at byte ${offset}: ${(e as Error).message}`, { cause: e });
      }
      if (h.typeflag === TYPE.paxExtended) {
        pax = new Map([...pax, ...decodePaxRecords(await this.#readMeta(h, offset))]);
        continue;
      }
      if (h.typeflag === TYPE.paxGlobal) {
        await this.#readMeta(h, offset);
        continue;
      }
      if (h.typeflag === TYPE.gnuLongName) {
        longName = cString(await this.#readMeta(h, offset));
        continue;
      }
      if (h.typeflag === TYPE.gnuLongLink) {
        longLink = cString(await this.#readMeta(h, offset));
        continue;
      }
      return this.#entry(h, { pax, longName, longLink, offset: first });
    }
  }

  #entry(h: TarHeader, ext: { pax: Map<string, Uint8Array>; longName: string | undefined; longLink: string | undefined; offset: number }): TarEntry {
    const { pax } = ext;
    const paxText = (k: string): string | undefined => {
      const v = pax.get(k);
      return v === undefined ? undefined : dec.decode(v);
    };
    const paxNumber = (k: string, what: string): number | undefined => {
      const v = paxText(k);
      if (v === undefined) return undefined;
      if (!/^\d+(\.\d+)?$/.test(v)) throw new DataCorruptionError(`Cannot read tar entry at byte ${ext.offset}: PAX ${what} '${v}' is not a number`);
      const n = Number(v);
      if (!Number.isFinite(n) || n > Number.MAX_SAFE_INTEGER) throw new DataCorruptionError(`Cannot read tar entry at byte ${ext.offset}: PAX ${what} ${v} exceeds 2^53`);
      return n;
    };
    const path = paxText('path') ?? ext.longName ?? (h.prefix !== '' ? `${h.prefix}/${h.name}` : h.name);
    const linkpath = paxText('linkpath') ?? ext.longLink ?? h.linkname;
    const type = entryType(h, path);
    if (type === undefined) {
      throw new UnsupportedError(`Cannot read tar entry ${path} (at byte ${ext.offset}): type flag '${h.typeflag.replace('\0', '\\0')}' is not supported`);
    }
    const size = paxNumber('size', 'size') ?? h.size;
    if (!Number.isSafeInteger(size)) throw new DataCorruptionError(`Cannot read tar entry ${path} (at byte ${ext.offset}): size ${size} is not an integer`);
    const xattrs = new Map<string, Uint8Array>();
    for (const [k, v] of pax) if (k.startsWith(XATTR_PREFIX) && k.length > XATTR_PREFIX.length) xattrs.set(k.slice(XATTR_PREFIX.length), v);
    const entry: TarEntry = {
      path,
      linkpath,
      type,
      mode: h.mode & 0o7777,
      uid: Math.trunc(paxNumber('uid', 'uid') ?? h.uid),
      gid: Math.trunc(paxNumber('gid', 'gid') ?? h.gid),
      size,
      mtime: paxNumber('mtime', 'mtime') ?? h.mtime,
      devmajor: h.devmajor,
      devminor: h.devminor,
      xattrs,
      offset: ext.offset,
    };
    this.#current = entry;
    this.#left = size;
    this.#padding = (TAR_BLOCK - (size % TAR_BLOCK)) % TAR_BLOCK;
    return entry;
  }

  /** Streams the current entry's data (views valid until the next read); throws when the stream is truncated. */
  async *body(): AsyncGenerator<Uint8Array> {
    const entry = this.#current;
    if (entry === undefined || this.#left === 0) return;
    for await (const piece of this.#src.stream(this.#left)) {
      this.#left -= piece.length;
      yield piece;
    }
    if (this.#left > 0) throw this.#truncated(entry, entry.size - this.#left);
    const pad = this.#padding;
    this.#padding = 0;
    await this.#src.skip(pad);
  }

  /** Consumes whatever follows the end of the archive; returns the byte count. */
  async drain(): Promise<number> {
    if (!this.#ended) await this.#skipRest();
    return this.#src.drain();
  }
}
