/**
 * Device configs of snapshots (`<sn>/block/config.v1.json`, snapshotter.md §8): the
 * registry URL of an image reference, atomic writes in upstream's key order, and lower
 * entries.
 */
import { chmod, rename, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { InvalidArgumentError } from '../io/errors.ts';
import type { DeviceConfig, LowerConfig } from '../image/device-config.ts';
import { serializeDeviceConfig } from '../image/image-device-config.ts';
import type { MirrorRegistry } from './config.ts';

/**
 * `repoBlobUrl` of an image reference (§8.3): containerd's reference parser without
 * Docker Hub normalisation — host = text before the first `/`, repository = the rest
 * without tag and digest; `docker.io` is served by `registry-1.docker.io`; `http://` for
 * a mirror host marked insecure.
 */
export function repoBlobUrl(ref: string, mirrors: readonly MirrorRegistry[] = []): string {
  let locator = ref;
  const at = locator.indexOf('@');
  if (at >= 0) locator = locator.slice(0, at);
  const slash = locator.indexOf('/');
  if (slash <= 0) throw new InvalidArgumentError(`Cannot derive a registry URL from image reference ${JSON.stringify(ref)}: no host name`);
  const colon = locator.lastIndexOf(':');
  if (colon > locator.lastIndexOf('/')) locator = locator.slice(0, colon);
  const host = locator.slice(0, slash);
  const repo = locator.slice(slash + 1);
  if (repo === '') throw new InvalidArgumentError(`Cannot derive a registry URL from image reference ${JSON.stringify(ref)}: no repository`);
  const insecure = mirrors.some((m) => m.host === host && m.insecure);
  return `${insecure ? 'http' : 'https'}://${host === 'docker.io' ? 'registry-1.docker.io' : host}/v2/${repo}/blobs`;
}

/** A lower entry with the given fields set and the rest empty. */
export function lower(fields: Partial<LowerConfig>): LowerConfig {
  return { file: '', dir: '', digest: '', size: 0, targetFile: '', targetDigest: '', gzipIndex: '', ...fields };
}

/** An empty config with `resultFile` set. */
export function emptyConfig(resultFile: string): DeviceConfig {
  return { repoBlobUrl: '', lowers: [], upper: undefined, resultFile, accelerationLayer: false, recordTracePath: '', download: undefined };
}

/** Writes `cfg` to `path` atomically (temporary file + rename), mode 0600. */
export async function writeConfigAtomic(path: string, cfg: DeviceConfig): Promise<void> {
  const tmp = join(dirname(path), `.config.v1.json.${randomBytes(6).toString('hex')}`);
  try {
    await writeFile(tmp, serializeDeviceConfig(cfg), { mode: 0o600 });
    await chmod(tmp, 0o600);
    await rename(tmp, path);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
