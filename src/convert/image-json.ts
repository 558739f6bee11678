/**
 * Manifest, index and config JSON exactly as upstream's convertor marshals them with Go
 * `encoding/json` (image-format.md §6-§7), so converted images get the same bytes and
 * digests: compact, keys in Go struct-field order, empty optional fields omitted, map
 * keys sorted bytewise, `<`, `>`, `&`, U+2028 and U+2029 escaped, times re-emitted in
 * RFC 3339 with trailing fractional zeros removed. Source fields that the image-spec
 * structures do not know are dropped.
 *
 * @example
 * ```ts
 * const bytes = convertImageConfig(JSON.parse(sourceConfigText), ['sha256:…']);
 * // {"created":"…","architecture":"amd64","os":"linux","config":{…},"rootfs":{…},"history":[…]}
 * ```
 */
import { DataCorruptionError } from '../io/errors.ts';
import type { Descriptor, Index, Manifest, Platform } from '../image/descriptor.ts';

/** An object whose keys serialise in insertion order. */
type Ordered = Map<string, unknown>;
type Json = Record<string, unknown>;

const enc = new TextEncoder();

function goString(s: string): string {
  return JSON.stringify(s).replace(/[<>&\u2028\u2029]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** Serialises Maps (in order), arrays, strings, finite numbers, booleans and null like Go. */
export function goJson(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return goString(v);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new RangeError(`Cannot encode ${v} as JSON`);
    return JSON.stringify(v);
  }
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (Array.isArray(v)) return `[${v.map(goJson).join(',')}]`;
  if (v instanceof Map) return `{${[...v].map(([k, x]) => `${goString(k as string)}:${goJson(x)}`).join(',')}}`;
  throw new TypeError(`Cannot encode a ${typeof v} as Go JSON (use a Map for objects)`);
}

function bytewise(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/** Typed readers of decoded JSON that fail the way Go's decoder would. */
class Reader {
  readonly #what: string;
  constructor(what: string) {
    this.#what = what;
  }

  fail(path: string, want: string): never {
    throw new DataCorruptionError(`Cannot convert ${this.#what}: ${path} is not ${want}`);
  }

  object(v: unknown, path: string): Json | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(path, 'an object');
    return v as Json;
  }

  string(v: unknown, path: string): string {
    if (v === undefined || v === null) return '';
    if (typeof v !== 'string') this.fail(path, 'a string');
    return v;
  }

  strings(v: unknown, path: string): string[] {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) this.fail(path, 'an array of strings');
    return v.map((x, i) => this.string(x, `${path}[${i}]`));
  }

  bool(v: unknown, path: string): boolean {
    if (v === undefined || v === null) return false;
    if (typeof v !== 'boolean') this.fail(path, 'a boolean');
    return v;
  }

  integer(v: unknown, path: string): number {
    if (!Number.isSafeInteger(v)) this.fail(path, 'an integer');
    return v as number;
  }

  /** `map[string]string`, keys sorted. */
  stringMap(v: unknown, path: string): Ordered | undefined {
    const o = this.object(v, path);
    if (o === undefined) return undefined;
    const keys = Object.keys(o).sort(bytewise);
    if (keys.length === 0) return undefined;
    return new Map(keys.map((k) => [k, this.string(o[k], `${path}.${k}`)]));
  }

  /** `map[string]struct{}`: every value becomes `{}`. */
  setMap(v: unknown, path: string): Ordered | undefined {
    const o = this.object(v, path);
    if (o === undefined) return undefined;
    const keys = Object.keys(o).sort(bytewise);
    if (keys.length === 0) return undefined;
    return new Map(keys.map((k) => [k, (this.object(o[k], `${path}.${k}`), new Map())]));
  }

  /** A Go `time.Time` re-emitted in RFC 3339 with nanoseconds, trailing zeros dropped. */
  time(v: unknown, path: string): string {
    const s = this.string(v, path);
    const m = /^(\d{4}-\d\d-\d\d)[Tt](\d\d:\d\d:\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)$/.exec(s);
    if (m === null) this.fail(path, 'an RFC 3339 time');
    const frac = (m[3] ?? '').slice(0, 9).replace(/0+$/, '');
    const zone = m[4] === 'Z' || m[4] === 'z' || m[4] === '+00:00' || m[4] === '-00:00' ? 'Z' : (m[4] as string);
    return `${m[1]}T${m[2]}${frac === '' ? '' : `.${frac}`}${zone}`;
  }
}

/** Sets `key` when `value` is not Go-empty (omitempty). */
function put(o: Ordered, key: string, value: unknown): void {
  if (value === undefined || value === '' || value === false || value === 0) return;
  if (Array.isArray(value) && value.length === 0) return;
  if (value instanceof Map && value.size === 0) return;
  o.set(key, value);
}

function platformJson(p: Platform | undefined, r: Reader, path: string): Ordered | undefined {
  const o = r.object(p, path);
  if (o === undefined) return undefined;
  const out: Ordered = new Map();
  out.set('architecture', r.string(o['architecture'], `${path}.architecture`));
  out.set('os', r.string(o['os'], `${path}.os`));
  put(out, 'os.version', r.string(o['os.version'], `${path}.os.version`));
  put(out, 'os.features', r.strings(o['os.features'], `${path}.os.features`));
  put(out, 'variant', r.string(o['variant'], `${path}.variant`));
  return out;
}

/** A descriptor in Go field order (image-spec `Descriptor`). */
export function descriptorJson(d: Descriptor, r: Reader = new Reader('descriptor'), path = 'descriptor'): Ordered {
  const o = r.object(d, path) as Json;
  const out: Ordered = new Map();
  out.set('mediaType', r.string(o['mediaType'], `${path}.mediaType`));
  out.set('digest', r.string(o['digest'], `${path}.digest`));
  out.set('size', r.integer(o['size'], `${path}.size`));
  put(out, 'urls', r.strings(o['urls'], `${path}.urls`));
  put(out, 'annotations', r.stringMap(o['annotations'], `${path}.annotations`));
  put(out, 'data', r.string(o['data'], `${path}.data`));
  const platform = platformJson(o['platform'] as Platform | undefined, r, `${path}.platform`);
  if (platform !== undefined) out.set('platform', platform);
  put(out, 'artifactType', r.string(o['artifactType'], `${path}.artifactType`));
  return out;
}

/** Manifest bytes (image-spec `Manifest` field order). */
export function marshalManifest(m: Manifest): Uint8Array {
  const r = new Reader('manifest');
  const out: Ordered = new Map();
  out.set('schemaVersion', r.integer(m.schemaVersion, 'schemaVersion'));
  put(out, 'mediaType', m.mediaType ?? '');
  put(out, 'artifactType', m.artifactType ?? '');
  out.set('config', descriptorJson(m.config, r, 'config'));
  out.set('layers', m.layers.map((l, i) => descriptorJson(l, r, `layers[${i}]`)));
  if (m.subject !== undefined) out.set('subject', descriptorJson(m.subject, r, 'subject'));
  put(out, 'annotations', r.stringMap(m.annotations, 'annotations'));
  return enc.encode(goJson(out));
}

/** Index bytes (image-spec `Index` field order). */
export function marshalIndex(idx: Index): Uint8Array {
  const r = new Reader('index');
  const out: Ordered = new Map();
  out.set('schemaVersion', r.integer(idx.schemaVersion, 'schemaVersion'));
  put(out, 'mediaType', idx.mediaType ?? '');
  put(out, 'artifactType', idx.artifactType ?? '');
  out.set('manifests', idx.manifests.map((d, i) => descriptorJson(d, r, `manifests[${i}]`)));
  if (idx.subject !== undefined) out.set('subject', descriptorJson(idx.subject, r, 'subject'));
  put(out, 'annotations', r.stringMap(idx.annotations, 'annotations'));
  return enc.encode(goJson(out));
}

/**
 * The converted image config (image-format.md §6): the source decoded into image-spec
 * v1.1.1's `Image` (unknown fields dropped), `rootfs.diff_ids` replaced, history kept.
 */
export function convertImageConfig(source: unknown, diffIds: readonly string[]): Uint8Array {
  const r = new Reader('image config');
  const src = r.object(source, 'the config') ?? r.fail('the config', 'an object');
  const out: Ordered = new Map();
  if (src['created'] !== undefined && src['created'] !== null) out.set('created', r.time(src['created'], 'created'));
  put(out, 'author', r.string(src['author'], 'author'));
  out.set('architecture', r.string(src['architecture'], 'architecture'));
  out.set('os', r.string(src['os'], 'os'));
  put(out, 'os.version', r.string(src['os.version'], 'os.version'));
  put(out, 'os.features', r.strings(src['os.features'], 'os.features'));
  put(out, 'variant', r.string(src['variant'], 'variant'));
  const c = r.object(src['config'], 'config') ?? {};
  const cfg: Ordered = new Map();
  put(cfg, 'User', r.string(c['User'], 'config.User'));
  put(cfg, 'ExposedPorts', r.setMap(c['ExposedPorts'], 'config.ExposedPorts'));
  put(cfg, 'Env', r.strings(c['Env'], 'config.Env'));
  put(cfg, 'Entrypoint', r.strings(c['Entrypoint'], 'config.Entrypoint'));
  put(cfg, 'Cmd', r.strings(c['Cmd'], 'config.Cmd'));
  put(cfg, 'Volumes', r.setMap(c['Volumes'], 'config.Volumes'));
  put(cfg, 'WorkingDir', r.string(c['WorkingDir'], 'config.WorkingDir'));
  put(cfg, 'Labels', r.stringMap(c['Labels'], 'config.Labels'));
  put(cfg, 'StopSignal', r.string(c['StopSignal'], 'config.StopSignal'));
  put(cfg, 'ArgsEscaped', r.bool(c['ArgsEscaped'], 'config.ArgsEscaped'));
  out.set('config', cfg);
  const rootfs = r.object(src['rootfs'], 'rootfs') ?? {};
  out.set('rootfs', new Map<string, unknown>([
    ['type', r.string(rootfs['type'], 'rootfs.type')],
    ['diff_ids', [...diffIds]],
  ]));
  const history = src['history'];
  if (history !== undefined && history !== null) {
    if (!Array.isArray(history)) r.fail('history', 'an array');
    const entries = (history as unknown[]).map((h, i) => {
      const o = r.object(h, `history[${i}]`) ?? {};
      const e: Ordered = new Map();
      if (o['created'] !== undefined && o['created'] !== null) e.set('created', r.time(o['created'], `history[${i}].created`));
      put(e, 'created_by', r.string(o['created_by'], `history[${i}].created_by`));
      put(e, 'author', r.string(o['author'], `history[${i}].author`));
      put(e, 'comment', r.string(o['comment'], `history[${i}].comment`));
      put(e, 'empty_layer', r.bool(o['empty_layer'], `history[${i}].empty_layer`));
      return e;
    });
    put(out, 'history', entries);
  }
  return enc.encode(goJson(out));
}

/** `rootfs.diff_ids` of a source config, checked. */
export function configDiffIds(source: unknown): string[] {
  const r = new Reader('image config');
  const src = r.object(source, 'the config') ?? r.fail('the config', 'an object');
  const rootfs = r.object(src['rootfs'], 'rootfs') ?? r.fail('rootfs', 'an object');
  return r.strings(rootfs['diff_ids'], 'rootfs.diff_ids');
}
