/**
 * Loop devices over a file: `losetup --direct-io=on` for the block device of a
 * FUSE-served image (no second page cache), buffered for a plain disk image file.
 */
import { readFile } from 'node:fs/promises';
import { debuglog, getSystemErrorName } from 'node:util';
import { attachLoopSyscall } from '../native/mount.ts';
import { runCommand } from './run-command.ts';

const log = debuglog('obd');

export async function attachLoop(file: string, options: { readOnly: boolean; directIo?: boolean }): Promise<string> {
  const dev = await attachLoopSyscall(file, { readOnly: options.readOnly, directIo: options.directIo !== false });
  if (typeof dev === 'string') return dev;
  log('loop: cannot attach %s by LOOP_CONFIGURE (%s); running losetup', file, getSystemErrorName(dev));
  const args = ['losetup', '-f', '--show', ...(options.directIo === false ? [] : ['--direct-io=on']), ...(options.readOnly ? ['-r'] : []), file];
  const { stdout } = await runCommand(args, { what: `attach a loop device to ${file}` });
  return stdout.trim();
}

export async function detachLoop(dev: string): Promise<void> {
  // The kernel may still hold the device for a moment after umount; retry briefly.
  for (let i = 0; ; i++) {
    try {
      await runCommand(['losetup', '-d', dev], { what: `detach ${dev}` });
      return;
    } catch (e) {
      if (i >= 20) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** The backing file of a loop device, or undefined. */
export async function loopBackingFile(dev: string): Promise<string | undefined> {
  const name = dev.replace(/^\/dev\//, '');
  try {
    return (await readFile(`/sys/block/${name}/loop/backing_file`, 'utf8')).trim();
  } catch {
    return undefined;
  }
}
