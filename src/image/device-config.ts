/**
 * Upstream's per-device configuration `config.v1.json` (runtime.md §2): lowers bottom
 * first, an optional writable upper, a result file. Unknown keys are ignored, missing
 * keys take their defaults, wrongly typed values are rejected naming the key.
 *
 * @example
 * ```ts
 * const cfg = parseDeviceConfig('{"lowers":[{"file":"/l/overlaybd.commit"}]}', '/l');
 * cfg.lowers[0]?.file; // '/l/overlaybd.commit'
 * ```
 */
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { InvalidArgumentError, NotFoundError } from '../io/errors.ts';

export interface LowerConfig {
  file: string;
  dir: string;
  digest: string;
  size: number;
  targetFile: string;
  targetDigest: string;
  gzipIndex: string;
}

export interface UpperConfig {
  index: string;
  data: string;
  target: string;
  gzipIndex: string;
}

export interface DeviceConfig {
  repoBlobUrl: string;
  lowers: LowerConfig[];
  /** Present only when both `index` and `data` are non-empty (runtime.md §2.3). */
  upper: UpperConfig | undefined;
  resultFile: string;
  accelerationLayer: boolean;
  recordTracePath: string;
  download: Record<string, unknown> | undefined;
}

type Json = Record<string, unknown>;

interface FieldSpec<T> {
  kind: 'string' | 'number' | 'boolean';
  dflt: T;
  where: string;
}

function field<T>(obj: Json, key: string, { kind, dflt, where }: FieldSpec<T>): T {
  const v = obj[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== kind || (kind === 'number' && !(Number.isSafeInteger(v) && (v as number) >= 0))) {
    throw new InvalidArgumentError(`Cannot read device config: ${where}${key} must be ${kind === 'number' ? 'a non-negative integer' : `a ${kind}`}`);
  }
  return v as T;
}

function object(v: unknown, where: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new InvalidArgumentError(`Cannot read device config: ${where} must be an object`);
  }
  return v as Json;
}

/**
 * Parses the JSON text of a device config. Relative paths are resolved against
 * `baseDir` (upstream requires absolute paths; relative ones are a convenience).
 */
export function parseDeviceConfig(text: string, baseDir: string): DeviceConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new InvalidArgumentError(`Cannot read device config: invalid JSON (${(e as Error).message})`, { cause: e });
  }
  const top = object(raw, 'the top level');
  const path = (p: string): string => (p === '' || isAbsolute(p) ? p : resolve(baseDir, p));
  const lowersRaw = top['lowers'] ?? [];
  if (!Array.isArray(lowersRaw)) throw new InvalidArgumentError('Cannot read device config: lowers must be an array');
  if (lowersRaw.length > 255) {
    throw new InvalidArgumentError(`Cannot read device config: ${lowersRaw.length} lowers, at most 255`);
  }
  const lowers = lowersRaw.map((l, i): LowerConfig => {
    const o = object(l, `lowers[${i}]`);
    const w = `lowers[${i}].`;
    return {
      file: path(field(o, 'file', { kind: 'string', dflt: '', where: w })),
      dir: path(field(o, 'dir', { kind: 'string', dflt: '', where: w })),
      digest: field(o, 'digest', { kind: 'string', dflt: '', where: w }),
      size: field(o, 'size', { kind: 'number', dflt: 0, where: w }),
      targetFile: path(field(o, 'targetFile', { kind: 'string', dflt: '', where: w })),
      targetDigest: field(o, 'targetDigest', { kind: 'string', dflt: '', where: w }),
      gzipIndex: path(field(o, 'gzipIndex', { kind: 'string', dflt: '', where: w })),
    };
  });
  let upper: UpperConfig | undefined;
  if (top['upper'] !== undefined && top['upper'] !== null) {
    const o = object(top['upper'], 'upper');
    const u = {
      index: path(field(o, 'index', { kind: 'string', dflt: '', where: 'upper.' })),
      data: path(field(o, 'data', { kind: 'string', dflt: '', where: 'upper.' })),
      target: path(field(o, 'target', { kind: 'string', dflt: '', where: 'upper.' })),
      gzipIndex: path(field(o, 'gzipIndex', { kind: 'string', dflt: '', where: 'upper.' })),
    };
    if (u.index !== '' && u.data !== '') upper = u;
  }
  const download = top['download'];
  return {
    repoBlobUrl: field(top, 'repoBlobUrl', { kind: 'string', dflt: '', where: '' }),
    lowers,
    upper,
    resultFile: path(field(top, 'resultFile', { kind: 'string', dflt: '', where: '' })),
    accelerationLayer: field(top, 'accelerationLayer', { kind: 'boolean', dflt: false, where: '' }),
    recordTracePath: path(field(top, 'recordTracePath', { kind: 'string', dflt: '', where: '' })),
    download: download === undefined ? undefined : object(download, 'download'),
  };
}

/** Reads and parses a device config file. */
export async function readDeviceConfig(file: string): Promise<DeviceConfig> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new NotFoundError(`Cannot read device config ${file}: no such file`, { cause: e });
    }
    throw e;
  }
  try {
    return parseDeviceConfig(text, dirname(resolve(file)));
  } catch (e) {
    if (e instanceof InvalidArgumentError) throw new InvalidArgumentError(`${e.message} (in ${file})`, { cause: e });
    throw e;
  }
}
