/**
 * Removes a work directory recursively unless something is still mounted below it:
 * a recursive delete would descend into the mounted file system. Such a directory is
 * left in place (the failed teardown already reported the mount).
 */
import { readFile, rm } from 'node:fs/promises';
import { resolve } from 'node:path';

/** Mount points at or below `dir` (from /proc/self/mountinfo, octal escapes decoded). */
export async function mountsBelow(dir: string): Promise<string[]> {
  const abs = resolve(dir);
  const text = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  return text
    .split('\n')
    .map((line) => (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((mp) => mp === abs || mp.startsWith(`${abs}/`));
}

/** Removes `dir` recursively; resolves false (and removes nothing) when a mount lies below it. */
export async function removeWorkDir(dir: string): Promise<boolean> {
  if ((await mountsBelow(dir)).length > 0) return false;
  await rm(dir, { recursive: true, force: true });
  return true;
}
