/**
 * The NBD server under the whole kernel stack a user would put on it (there is no
 * nbd.ko here): `nbdfuse` turns the export into a FUSE file (4 connections, structured
 * replies), `losetup --direct-io=on` makes it a block device, then mkfs.ext4, mount,
 * write and read a file, umount, e2fsck. Teardown runs in after() whatever happened:
 * umount, `losetup -d`, `fusermount3 -u`, nbdfuse exit, server close.
 *
 * Needs root, /dev/fuse, nbdfuse (libnbd-bin), losetup, mkfs.ext4; skipped otherwise.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { createNbdServer } from '../src/nbd/nbd-server.ts';
import type { NbdServer } from '../src/nbd/nbd-server.ts';
import { MemoryBlockDevice } from './support/memory-block-device.ts';
import { xs } from './support/generators.ts';

const exec = promisify(execFile);
const SIZE = 64 << 20;

async function run(cmd: string, args: string[], timeout = 60_000): Promise<string> {
  const { stdout } = await exec(cmd, args, { timeout, encoding: 'utf8' });
  return stdout.trim();
}

/** Runs `cmd` until it succeeds, at most `tries` times (EBUSY right after a detach is normal). */
async function retry(cmd: string, args: string[], tries = 20): Promise<void> {
  for (let i = 1; ; i++) {
    try {
      await run(cmd, args, 10_000);
      return;
    } catch (e) {
      if (i >= tries) throw e;
      await sleep(100);
    }
  }
}

/** True when `path` is a mount point now (from /proc/self/mounts; octal escapes decoded). */
function isMounted(path: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .some((line) => line.split(' ')[1]?.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))) === path);
}

async function missing(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'needs root';
  if (!existsSync('/dev/fuse')) return 'needs /dev/fuse';
  for (const t of ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'e2fsck', 'mount', 'umount']) {
    try {
      await exec('which', [t]);
    } catch {
      return `needs ${t}`;
    }
  }
  return undefined;
}

const skip = await missing();

let dir: string;
let fuseDir: string;
let mnt: string;
let dev: MemoryBlockDevice;
let server: NbdServer | undefined;
let nbdfuse: ChildProcess | undefined;
let nbdfuseExit: Promise<void> | undefined;

before(async () => {
  if (skip !== undefined) return;
  dir = mkdtempSync(join(tmpdir(), 'obd-nbd-fuse-'));
  fuseDir = join(dir, 'fuse');
  mnt = join(dir, 'mnt');
  mkdirSync(fuseDir);
  mkdirSync(mnt);
  dev = new MemoryBlockDevice(xs(SIZE, 0x1234567));
  server = createNbdServer({ device: dev, name: 'disk' });
});

after(async () => {
  if (skip !== undefined) return;
  const problems: string[] = [];
  const step = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      problems.push(`${what}: ${(e as Error).message}`);
    }
  };
  // Decided from the system's state, not from how far the test got.
  if (isMounted(mnt)) await step('umount', () => retry('umount', [mnt]));
  const file = join(fuseDir, 'disk');
  if (isMounted(fuseDir)) {
    let loops: string[] = [];
    await step('losetup -j', async () => {
      loops = (await run('losetup', ['-j', file], 10_000)).split('\n').filter(Boolean).map((l) => l.split(':')[0] as string);
    });
    for (const l of loops) await step(`losetup -d ${l}`, () => retry('losetup', ['-d', l]));
    await step('fusermount3 -u', () => retry('fusermount3', ['-u', fuseDir]));
  }
  if (nbdfuse !== undefined && nbdfuseExit !== undefined) {
    const timeout = new AbortController();
    const exited = await Promise.race([
      nbdfuseExit.then(() => true),
      sleep(5000, false, { signal: timeout.signal }).catch(() => false),
    ]);
    timeout.abort();
    if (!exited) {
      problems.push('nbdfuse did not exit after fusermount3 -u; killed');
      nbdfuse.kill('SIGKILL');
      await nbdfuseExit;
    }
  }
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
  assert.deepEqual(problems, []);
});

test('nbdfuse → loop (direct I/O) → ext4: write, read back, fsck; all torn down', { skip, timeout: 120_000 }, async () => {
  const srv = server as NbdServer;
  const sock = join(dir, 'nbd.sock');
  await srv.listen({ path: sock });

  const pidfile = join(dir, 'nbdfuse.pid');
  const child = spawn('nbdfuse', ['-P', pidfile, join(fuseDir, 'disk'), '--unix', sock], { stdio: ['ignore', 'ignore', 'pipe'] });
  nbdfuse = child;
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  nbdfuseExit = new Promise((resolve) => child.once('exit', () => resolve()));
  for (let i = 0; i < 200 && !existsSync(pidfile) && child.exitCode === null; i++) await sleep(50);
  assert.ok(existsSync(pidfile), `nbdfuse did not come up: ${stderr}`);
  assert.ok(srv.connections >= 1, 'nbdfuse holds no connection');

  const file = join(fuseDir, 'disk');
  const seen = await readFile(file);
  assert.equal(seen.length, SIZE);
  assert.ok(seen.equals(dev.bytes), 'the FUSE file differs from the device');

  const loop = await run('losetup', ['-f', '--show', '--direct-io=on', file]);
  assert.match(loop, /^\/dev\/loop\d+$/);
  await run('mkfs.ext4', ['-q', '-F', '-E', 'nodiscard', loop]);
  await run('mount', ['-t', 'ext4', loop, mnt]);
  const content = Buffer.from(xs(3 << 20, 0xfeed));
  await writeFile(join(mnt, 'hello.bin'), content);
  await run('sync', []);
  assert.ok((await readFile(join(mnt, 'hello.bin'))).equals(content));
  await retry('umount', [mnt]);
  await run('e2fsck', ['-fn', loop]);

  // The bytes really went through NBD to the device: ext4 superblock magic and the file's data.
  assert.equal(Buffer.from(dev.bytes).readUInt16LE(1024 + 56), 0xef53);
  assert.ok(Buffer.from(dev.bytes).indexOf(content.subarray(0, 65536)) >= 0, 'file data not on the device');
});
