/**
 * Reads `/proc/self/mountinfo`: whether a path is a mount point, which mounts lie under
 * a directory, and which overlay mounts use a directory as a layer.
 */
import { readFile } from 'node:fs/promises';
import { resolve, sep } from 'node:path';

/** One line of mountinfo. */
export interface MountInfo {
  mountPoint: string;
  fstype: string;
  source: string;
  superOptions: string;
}

/** Undoes mountinfo's octal escapes (`\040` for a space). */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Parses mountinfo text (proc(5)). */
export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const left = line.slice(0, dash).split(' ');
    const right = line.slice(dash + 3).split(' ');
    out.push({
      mountPoint: unescape(left[4] ?? ''),
      fstype: right[0] ?? '',
      source: unescape(right[1] ?? ''),
      superOptions: unescape(right[2] ?? ''),
    });
  }
  return out;
}

/** The current mount table. */
export async function readMountInfo(): Promise<MountInfo[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** Whether `path` is a mount point. */
export async function isMountPoint(path: string): Promise<boolean> {
  const p = resolve(path);
  return (await readMountInfo()).some((m) => m.mountPoint === p);
}

/** Mount points at or below `dir`. */
export async function mountsUnder(dir: string): Promise<string[]> {
  const d = resolve(dir);
  return (await readMountInfo()).map((m) => m.mountPoint).filter((p) => p === d || p.startsWith(d + sep));
}

/** Whether some overlay mount names `dir` in its options (lowerdir, upperdir, workdir). */
export async function overlayUses(dir: string): Promise<boolean> {
  const d = resolve(dir);
  return (await readMountInfo()).some(
    (m) => m.fstype === 'overlay' && m.superOptions.split(/[,:=]/).some((part) => part === d),
  );
}
