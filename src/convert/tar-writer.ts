/**
 * Builds tar archives from a declarative entry list through the real header encoder
 * (STYLE.md §3): ustar headers, the ustar prefix for long paths when it fits, otherwise
 * PAX `path`/`linkpath` records (or GNU `L`/`K` entries with `longNames: 'gnu'`), PAX
 * `SCHILY.xattr.*` for extended attributes and PAX `mtime` for fractional times. Used
 * by the tests to build layers with every entry kind, and for the plain ustar wrapper of
 * the prebuilt base layer (image-format.md §4.3).
 *
 * @example
 * ```ts
 * const tar = buildTar([
 *   { path: 'etc/', type: 'directory', mode: 0o755 },
 *   { path: 'etc/motd', type: 'file', data: new TextEncoder().encode('hi\n') },
 *   { path: 'etc/.wh.old', type: 'file' },
 * ]);
 * ```
 */
import { InvalidArgumentError } from '../io/errors.ts';
import { encodePaxRecords, encodeTarHeader, TAR_BLOCK, TYPE } from './tar-header.ts';
import type { TarEntryType } from './tar-reader.ts';

export interface TarWriteEntry {
  path: string;
  type: TarEntryType;
  /** Permission bits (setuid/setgid/sticky included); default 0o644, 0o755 for directories. */
  mode?: number;
  uid?: number;
  gid?: number;
  uname?: string;
  gname?: string;
  /** Seconds since the epoch; fractional values add a PAX `mtime` record. */
  mtime?: number;
  data?: Uint8Array;
  linkpath?: string;
  devmajor?: number;
  devminor?: number;
  xattrs?: Record<string, string | Uint8Array>;
  /**
   * Header size field when it must differ from `data.length` (malformed-archive tests:
   * a huge declared size over short data).
   */
  declaredSize?: number;
}

export interface BuildTarOptions {
  /** How names longer than the header fields are stored (default `pax`). */
  longNames?: 'pax' | 'gnu';
  /** Leave out the two zero blocks at the end. */
  noTrailer?: boolean;
}

const TYPEFLAG: Record<TarEntryType, string> = {
  file: TYPE.regular,
  hardlink: TYPE.hardlink,
  symlink: TYPE.symlink,
  char: TYPE.char,
  block: TYPE.block,
  directory: TYPE.directory,
  fifo: TYPE.fifo,
  socket: TYPE.regular,
};
const S_IFSOCK = 0o140000;
const enc = new TextEncoder();

function padded(data: Uint8Array): Uint8Array[] {
  const pad = (TAR_BLOCK - (data.length % TAR_BLOCK)) % TAR_BLOCK;
  return pad === 0 ? [data] : [data, new Uint8Array(pad)];
}

/** Splits a long path into ustar prefix (≤155 bytes) and name (≤100 bytes), if possible. */
function splitUstar(path: string): { prefix: string; name: string } | undefined {
  const bytes = enc.encode(path);
  if (bytes.length <= 100) return { prefix: '', name: path };
  for (let i = path.length - 1; i > 0; i--) {
    if (path[i] !== '/') continue;
    const prefix = path.slice(0, i);
    const name = path.slice(i + 1);
    if (enc.encode(prefix).length <= 155 && enc.encode(name).length <= 100 && name !== '') return { prefix, name };
  }
  return undefined;
}

function special(name: string, typeflag: string, data: Uint8Array): Uint8Array[] {
  return [encodeTarHeader({ name, typeflag, size: data.length }), ...padded(data)];
}

/** Encodes `entries` as a tar archive. */
export function buildTar(entries: readonly TarWriteEntry[], options: BuildTarOptions = {}): Uint8Array {
  const parts: Uint8Array[] = [];
  const gnu = options.longNames === 'gnu';
  for (const e of entries) {
    const data = e.data ?? new Uint8Array(0);
    if (data.length > 0 && e.type !== 'file') throw new InvalidArgumentError(`Cannot build tar entry ${e.path}: only regular files carry data`);
    const pax: Array<[string, string | Uint8Array]> = [];
    let name = e.path;
    let prefix = '';
    const split = splitUstar(e.path);
    if (split !== undefined && (!gnu || split.prefix === '')) ({ name, prefix } = split);
    else if (gnu) {
      parts.push(...special('././@LongLink', TYPE.gnuLongName, enc.encode(`${e.path}\0`)));
      name = e.path.slice(0, 100);
    } else {
      pax.push(['path', e.path]);
      name = e.path.slice(-100).replace(/^\/+/, '');
    }
    let linkname = e.linkpath ?? '';
    if (enc.encode(linkname).length > 100) {
      if (gnu) parts.push(...special('././@LongLink', TYPE.gnuLongLink, enc.encode(`${linkname}\0`)));
      else pax.push(['linkpath', linkname]);
      linkname = linkname.slice(0, 100);
    }
    const mtime = e.mtime ?? 0;
    if (!Number.isInteger(mtime)) pax.push(['mtime', mtime.toFixed(9).replace(/0+$/, '')]);
    for (const [k, v] of Object.entries(e.xattrs ?? {})) pax.push([`SCHILY.xattr.${k}`, v]);
    if (pax.length > 0) parts.push(...special(`PaxHeaders/${name.slice(0, 80)}`, TYPE.paxExtended, encodePaxRecords(pax)));
    const mode = (e.mode ?? (e.type === 'directory' ? 0o755 : 0o644)) | (e.type === 'socket' ? S_IFSOCK : 0);
    parts.push(
      encodeTarHeader({
        name,
        prefix,
        typeflag: TYPEFLAG[e.type],
        mode,
        uid: e.uid ?? 0,
        gid: e.gid ?? 0,
        uname: e.uname ?? '',
        gname: e.gname ?? '',
        size: e.declaredSize ?? data.length,
        mtime: Math.floor(mtime),
        linkname,
        devmajor: e.devmajor ?? 0,
        devminor: e.devminor ?? 0,
        format: gnu ? 'gnu' : 'ustar',
      }),
      ...padded(data),
    );
  }
  if (options.noTrailer !== true) parts.push(new Uint8Array(2 * TAR_BLOCK));
  return Buffer.concat(parts);
}
