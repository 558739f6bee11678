/**
 * Finding and aborting FUSE connections from user space.
 *
 * Every FUSE mount has a kernel connection named by the minor number of the mount's
 * anonymous device (the `0:N` in `/proc/self/mountinfo`). fusectl exposes it as
 * `/sys/fs/fuse/connections/N/`; writing to its `abort` file fails every pending and
 * future request (users see ENOTCONN/EIO, readers of /dev/fuse see ENODEV). That is the
 * last resort for a hung server; the mount itself stays until it is unmounted.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { FailedPreconditionError, InvalidArgumentError } from '../io/errors.ts';

const FUSECTL = '/sys/fs/fuse/connections';
const run = promisify(execFile);

/** One line of `/proc/self/mountinfo`. */
export interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
  major: number;
  minor: number;
}

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parses `/proc/self/mountinfo` text (proc(5)). */
export function parseMountInfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 6 || fields.length < dash + 3) continue;
    const [major, minor] = (fields[2] as string).split(':').map(Number);
    out.push({
      mountpoint: unescapeMountField(fields[4] as string),
      fstype: fields[dash + 1] as string,
      source: unescapeMountField(fields[dash + 2] as string),
      major: major ?? NaN,
      minor: minor ?? NaN,
    });
  }
  return out;
}

/** The topmost mount at `mountpoint` (an absolute, resolved path), if any. */
export async function findMount(mountpoint: string): Promise<MountInfo | undefined> {
  const mounts = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
  return mounts.filter((m) => m.mountpoint === mountpoint).pop();
}

async function fusectlMounted(): Promise<boolean> {
  const mounts = parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
  return mounts.some((m) => m.mountpoint === FUSECTL && m.fstype === 'fusectl');
}

/** Mounts fusectl at /sys/fs/fuse/connections unless it already is; true if it did. */
export async function ensureFusectl(): Promise<boolean> {
  if (await fusectlMounted()) return false;
  try {
    await run('mount', ['-t', 'fusectl', 'none', FUSECTL], { timeout: 10_000 });
    return true;
  } catch (e) {
    if (await fusectlMounted()) return false; // Someone else mounted it meanwhile.
    throw new FailedPreconditionError(`Cannot mount fusectl at ${FUSECTL}: ${(e as Error).message.trim()}`, { cause: e });
  }
}

/**
 * Aborts FUSE connection `connection` (the minor number from mountinfo). Resolves
 * quietly when the connection no longer exists. fusectl is mounted for the call when
 * absent, and unmounted again afterwards.
 *
 * @example
 * ```ts
 * const m = await findMount('/mnt/obd');
 * if (m?.fstype.startsWith('fuse')) await abortFuseConnection(m.minor);
 * ```
 */
export async function abortFuseConnection(connection: number): Promise<void> {
  if (!Number.isSafeInteger(connection) || connection < 0) {
    throw new InvalidArgumentError(`Cannot abort FUSE connection ${connection}: not a connection number`);
  }
  // Bounded retry: a concurrent caller may unmount the fusectl it mounted under us.
  for (let attempt = 0; attempt < 3; attempt++) {
    const mountedHere = await ensureFusectl();
    try {
      await writeFile(`${FUSECTL}/${connection}/abort`, '1', { flag: 'r+' });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new FailedPreconditionError(`Cannot abort FUSE connection ${connection}: ${(e as Error).message}`, { cause: e });
      }
      if (await fusectlMounted()) return; // The connection is gone already.
    } finally {
      if (mountedHere) await run('umount', [FUSECTL], { timeout: 10_000 }).catch(() => {});
    }
  }
}
