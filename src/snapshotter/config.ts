/**
 * Upstream's snapshotter config file (`/etc/overlaybd-snapshotter/config.json`,
 * snapshotter.md §2), parsed separately from construction: the file is decoded on top
 * of the defaults (omitted keys keep them, unknown keys are ignored, `null` keeps the
 * default), a wrongly typed value is an InvalidArgumentError naming the key.
 *
 * @example
 * ```ts
 * const cfg = parseSnapshotterConfig('{"root":"/var/lib/obd","address":"/run/obd.sock","rwMode":"dir"}');
 * const sn = await createSnapshotter(cfg.root, snapshotterOptionsFromConfig(cfg));
 * ```
 */
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError, NotFoundError } from '../io/errors.ts';
import type { SnapshotterOptions } from './snapshotter.ts';

/** Where upstream's daemon reads its config when no argument is given. */
export const DEFAULT_CONFIG_PATH = '/etc/overlaybd-snapshotter/config.json';

/** Container rootfs modes for overlaybd images (snapshotter.md §7). */
export type RwMode = 'overlayfs' | 'dir' | 'dev';

/** Writable layer formats: log-structured `append` or `sparse` (`overlaybd-create -s`). */
export type WritableLayerType = 'append' | 'sparse';

/** A `mirrorRegistry` entry. */
export interface MirrorRegistry {
  host: string;
  insecure: boolean;
}

/** The Prometheus exporter settings. */
export interface ExporterConfig {
  enable: boolean;
  uriPrefix: string;
  port: number;
}

/** The decoded config file with defaults applied. */
export interface SnapshotterConfig {
  root: string;
  address: string;
  verbose: string;
  logReportCaller: boolean;
  /** Any value other than `dir`/`dev` in the file becomes `overlayfs`, as upstream treats it. */
  rwMode: RwMode;
  autoRemoveDev: boolean;
  asyncRemove: boolean;
  writableLayerType: WritableLayerType;
  mirrorRegistry: MirrorRegistry[];
  defaultFsType: string;
  rootfsQuota: string;
  tenant: number;
  /** With `ext4` and then `erofs` appended when missing, as upstream does after loading. */
  turboFsType: string[];
  runtimeType: string;
  exporterConfig: ExporterConfig;
  /**
   * overlaybd-ts extension (default true): attach the device of an accelerated image
   * (top layer `…/acceleration-layer: yes`) when that layer is committed at pull, in the
   * background, so trace replay runs before the first container starts (README.md).
   */
  attachOnPull: boolean;
}

type Json = Record<string, unknown>;

function fail(source: string, key: string, want: string): never {
  throw new InvalidArgumentError(`Cannot read snapshotter config ${source}: ${key} must be ${want}`);
}

function pick<T>(obj: Json, key: string, check: { type: 'string' | 'boolean' | 'integer'; dflt: T; source: string; prefix?: string }): T {
  const v = obj[key];
  if (v === undefined || v === null) return check.dflt;
  const name = `${check.prefix ?? ''}${key}`;
  if (check.type === 'integer') {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) fail(check.source, name, 'an integer');
  } else if (typeof v !== check.type) fail(check.source, name, `a ${check.type}`);
  return v as T;
}

function object(v: unknown, source: string, key: string): Json {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail(source, key, 'an object');
  return v as Json;
}

/** Parses config file text; `source` names it in error messages. */
export function parseSnapshotterConfig(text: string, source = 'config.json'): SnapshotterConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new InvalidArgumentError(`Cannot read snapshotter config ${source}: invalid JSON (${(e as Error).message})`, { cause: e });
  }
  const top = object(raw, source, 'the top level');
  const str = (key: string, dflt: string): string => pick(top, key, { type: 'string', dflt, source });
  const bool = (key: string): boolean => pick(top, key, { type: 'boolean', dflt: false, source });

  const rw = str('rwMode', 'overlayfs');
  let mirrorRegistry: MirrorRegistry[] = [];
  const mirrors = top['mirrorRegistry'];
  if (mirrors !== undefined && mirrors !== null) {
    if (!Array.isArray(mirrors)) fail(source, 'mirrorRegistry', 'an array');
    mirrorRegistry = mirrors.map((m, i) => {
      const o = object(m, source, `mirrorRegistry[${i}]`);
      const prefix = `mirrorRegistry[${i}].`;
      return {
        host: pick(o, 'host', { type: 'string', dflt: '', source, prefix }),
        insecure: pick(o, 'insecure', { type: 'boolean', dflt: false, source, prefix }),
      };
    });
  }
  let turboFsType = ['erofs', 'ext4'];
  const turbo = top['turboFsType'];
  if (turbo !== undefined && turbo !== null) {
    if (!Array.isArray(turbo) || turbo.some((t) => typeof t !== 'string')) fail(source, 'turboFsType', 'an array of strings');
    turboFsType = [...(turbo as string[])];
  }
  for (const t of ['ext4', 'erofs']) if (!turboFsType.includes(t)) turboFsType.push(t);
  const exp = top['exporterConfig'] === undefined || top['exporterConfig'] === null ? {} : object(top['exporterConfig'], source, 'exporterConfig');
  const prefix = 'exporterConfig.';
  return {
    root: str('root', ''),
    address: str('address', ''),
    verbose: str('verbose', 'info'),
    logReportCaller: bool('logReportCaller'),
    rwMode: rw === 'dir' || rw === 'dev' ? rw : 'overlayfs',
    autoRemoveDev: bool('autoRemoveDev'),
    asyncRemove: bool('asyncRemove'),
    writableLayerType: str('writableLayerType', 'append') === 'sparse' ? 'sparse' : 'append',
    mirrorRegistry,
    defaultFsType: str('defaultFsType', 'ext4'),
    rootfsQuota: str('rootfsQuota', ''),
    tenant: pick(top, 'tenant', { type: 'integer', dflt: -1, source }),
    turboFsType,
    runtimeType: str('runtimeType', 'containerd'),
    attachOnPull: pick(top, 'attachOnPull', { type: 'boolean', dflt: true, source }),
    exporterConfig: {
      enable: pick(exp, 'enable', { type: 'boolean', dflt: false, source, prefix }),
      uriPrefix: pick(exp, 'uriPrefix', { type: 'string', dflt: '/metrics', source, prefix }),
      port: pick(exp, 'port', { type: 'integer', dflt: 9863, source, prefix }),
    },
  };
}

/** Reads and parses the config file (default {@link DEFAULT_CONFIG_PATH}). */
export async function loadSnapshotterConfig(path: string = DEFAULT_CONFIG_PATH): Promise<SnapshotterConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new NotFoundError(`Cannot read snapshotter config ${path}: no such file`, { cause: e });
    throw e;
  }
  return parseSnapshotterConfig(text, path);
}

/** The construction options a config file implies (everything but root, address, logging, exporter). */
export function snapshotterOptionsFromConfig(cfg: SnapshotterConfig): SnapshotterOptions {
  return {
    rwMode: cfg.rwMode,
    writableLayerType: cfg.writableLayerType,
    autoRemoveDev: cfg.autoRemoveDev,
    asyncRemove: cfg.asyncRemove,
    mirrorRegistry: cfg.mirrorRegistry,
    defaultFsType: cfg.defaultFsType,
    turboFsType: cfg.turboFsType,
    attachOnPull: cfg.attachOnPull,
  };
}
