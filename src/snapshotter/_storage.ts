/**
 * Storage classification of a snapshot directory (snapshotter.md §5.0): what backs it —
 * a plain directory, a local overlaybd blob, an uncompressed layer to convert, or a
 * remote overlaybd blob described by its device config.
 */
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { LSMT_MAGIC0, LSMT_MAGIC1 } from '../formats/lsmt/header-trailer.ts';
import { ZFILE_MAGIC0, ZFILE_MAGIC1 } from '../formats/zfile/header.ts';
import { LABELS } from './labels.ts';

/** What backs a snapshot: upstream's Normal, LocalBlock, LocalLayer, RemoteBlock. */
export type StorageType = 'normal' | 'local-block' | 'local-layer' | 'remote-block';

const ZFILE_MAGIC = Uint8Array.from([...ZFILE_MAGIC0, ...ZFILE_MAGIC1]);
const LSMT_MAGIC = Uint8Array.from([...LSMT_MAGIC0, ...LSMT_MAGIC1]);

function startsWith(b: Uint8Array, magic: Uint8Array): boolean {
  return magic.every((v, i) => b[i] === v);
}

/** Whether `path` exists (ENOENT/ENOTDIR → false, other errors thrown). */
export async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR') return false;
    throw e;
  }
}

/** Reads up to 32 bytes; undefined when the file is missing, unreadable or empty. */
async function head(path: string): Promise<Uint8Array | undefined> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const buf = new Uint8Array(32);
    const { bytesRead } = await fh.read(buf, 0, 32, 0);
    return bytesRead === 0 ? undefined : buf.subarray(0, bytesRead);
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}

/** Whether labels carry an image reference (`image-ref` or CRI's `cri.image-ref`). */
export function imageRefOf(labels: Record<string, string>): string | undefined {
  return labels[LABELS.imageRef] ?? labels[LABELS.criImageRef];
}

/** Whether the labels mark a remote overlaybd layer being pulled (§5.0 rule 1). */
export function isRemoteLayerLabels(labels: Record<string, string>): boolean {
  return (
    labels[LABELS.targetRef] !== undefined &&
    labels[LABELS.blobSize] !== undefined &&
    labels[LABELS.blobDigest] !== undefined &&
    imageRefOf(labels) !== undefined
  );
}

/** TurboOCI target digest label (or its legacy fastoci alias). */
export function turboOciTarget(labels: Record<string, string>): { digest: string; mediaType: string } | undefined {
  const digest = labels[LABELS.turboOciTargetDigest];
  if (digest !== undefined) return { digest, mediaType: labels[LABELS.turboOciTargetMediaType] ?? '' };
  const legacy = labels[LABELS.fastOciTargetDigest];
  if (legacy !== undefined) return { digest: legacy, mediaType: labels[LABELS.fastOciTargetMediaType] ?? '' };
  return undefined;
}

/** Directory of the writable layer files: the `overlay.active.path` label or `<sn>/block`. */
export function writableDir(snDir: string, labels: Record<string, string>): string {
  return labels[LABELS.activePath] ?? join(snDir, 'block');
}

/** Classifies the snapshot at `snDir` with labels `labels`. */
export async function classifyStorage(snDir: string, labels: Record<string, string>): Promise<StorageType> {
  if (isRemoteLayerLabels(labels)) return 'remote-block';
  for (const file of [join(snDir, 'fs', 'overlaybd.commit'), join(snDir, 'fs', 'overlaybd.sealed'), join(writableDir(snDir, labels), 'writable_data')]) {
    const b = await head(file);
    if (b === undefined) continue;
    return b.length >= 24 && (startsWith(b, ZFILE_MAGIC) || startsWith(b, LSMT_MAGIC)) ? 'local-block' : 'normal';
  }
  if (await exists(join(snDir, 'layer.tar'))) return 'local-layer';
  if (await exists(join(snDir, 'block', 'config.v1.json'))) return 'remote-block';
  return 'normal';
}
