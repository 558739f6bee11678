/**
 * The FUSE frontend under the kernel's loop driver, the way overlaybd-ts attaches
 * images: serveFuse → `losetup --direct-io=on` → ext4 → teardown (needs root).
 *
 * Every command runs asynchronously: the device lives on this thread, and a synchronous
 * child (execFileSync('mkfs.ext4', …)) would block the thread that must answer it.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { randomFillSync, createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveFuse } from '../src/fuse/serve-fuse.ts';
import type { FuseMount } from '../src/fuse/serve-fuse.ts';
import { MemoryBlockDevice } from './support/memory-block-device.ts';

const skip = process.getuid?.() !== 0 || !existsSync('/dev/fuse') || !existsSync('/dev/loop-control') ? 'needs root, /dev/fuse and loop devices' : false;
const T = { timeout: 120_000, skip };
const SIZE = 64 << 20;

/** Runs a command asynchronously with a time limit; resolves stdout as bytes. */
function sh(argv: string[], timeoutMs = 60_000): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { encoding: 'buffer', maxBuffer: 256 << 20, timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr.toString()}`));
      else resolve(stdout);
    });
  });
}

const text = async (argv: string[]): Promise<string> => (await sh(argv)).toString().trim();
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const mountsText = (): string => readFileSync('/proc/self/mounts', 'utf8');

let root = '';
let fsDir = '';
let device: MemoryBlockDevice;
let fuse: FuseMount | undefined;
let loop = '';
let ext4Mounted = false;

before(async () => {
  if (skip) return;
  root = mkdtempSync(join(tmpdir(), 'obd-fuse-loop-'));
  fsDir = join(root, 'fs');
  mkdirSync(fsDir);
  mkdirSync(join(root, 'mnt'));
  device = new MemoryBlockDevice(randomFillSync(new Uint8Array(SIZE)));
  fuse = await serveFuse(device, { mountpoint: join(root, 'mnt') });
  loop = await text(['losetup', '-f', '--show', '--direct-io=on', fuse.path]);
});

after(async () => {
  if (skip) return;
  // Teardown order matters (platform notes): filesystem, loop device, then FUSE.
  if (ext4Mounted) await sh(['umount', '-l', fsDir]).catch(() => {});
  if (loop !== '' && (await text(['losetup', '-a'])).includes(loop)) await sh(['losetup', '-d', loop]).catch(() => {});
  await fuse?.unmount({ abortAfterMs: 2000 }).catch(() => {});
  rmSync(root, { recursive: true, force: true });
});

test('the loop device runs with direct I/O over the FUSE file', T, async () => {
  const name = loop.replace('/dev/', '');
  assert.equal(readFileSync(`/sys/block/${name}/loop/dio`, 'utf8').trim(), '1');
  assert.equal(Number(await text(['blockdev', '--getsize64', loop])), SIZE);
});

test('concurrent direct reads from several processes return the device bytes', T, async () => {
  const jobs = [
    { bs: 4096, skip: 0, count: 512 },
    { bs: 4096, skip: 3001, count: 700 },
    { bs: 65536, skip: 100, count: 96 },
    { bs: 1 << 20, skip: 20, count: 16 },
    { bs: 1 << 20, skip: 40, count: 24 },
    { bs: 512, skip: 77_777, count: 1000 },
  ];
  const outputs = await Promise.all(
    jobs.map((j) => sh(['dd', `if=${loop}`, 'iflag=direct', `bs=${j.bs}`, `skip=${j.skip}`, `count=${j.count}`, 'status=none'])),
  );
  for (const [i, j] of jobs.entries()) {
    const start = j.bs * j.skip;
    assert.equal(outputs[i]?.length, j.bs * j.count);
    assert.equal(sha(outputs[i] as Buffer), sha(device.bytes.subarray(start, start + j.bs * j.count)), `dd bs=${j.bs} skip=${j.skip}`);
  }
});

test('blkdiscard on the loop device reaches device.trim', T, async () => {
  const before = device.trims.length;
  await sh(['blkdiscard', '--offset', String(8 << 20), '--length', String(4 << 20), loop]);
  const trims = device.trims.slice(before);
  assert.ok(trims.length > 0, 'discard arrived as FALLOCATE(PUNCH_HOLE)');
  assert.equal(trims.reduce((n, t) => n + t.length, 0), 4 << 20);
  assert.ok(trims.every((t) => t.offset >= 8 << 20 && t.offset + t.length <= 12 << 20));
  const back = await sh(['dd', `if=${loop}`, 'iflag=direct', 'bs=1M', 'skip=8', 'count=4', 'status=none']);
  assert.ok(back.every((b) => b === 0));
});

test('ext4 on the loop device: mkfs, files, fstrim, fsck, remount, and the bytes land in the device', T, async () => {
  await sh(['mkfs.ext4', '-F', '-q', loop]);
  await sh(['mount', '-t', 'ext4', loop, fsDir]);
  ext4Mounted = true;
  const data = randomFillSync(Buffer.alloc(5 << 20));
  await writeFile(join(fsDir, 'data.bin'), data);
  for (let i = 0; i < 50; i++) await writeFile(join(fsDir, `small-${i}.txt`), `file ${i}\n`.repeat(i + 1));
  await writeFile(join(fsDir, 'scratch.bin'), randomFillSync(Buffer.alloc(8 << 20)));
  await sh(['sync', '-f', join(fsDir, 'data.bin')]);
  rmSync(join(fsDir, 'scratch.bin'));
  const trimsBefore = device.trims.length;
  await sh(['fstrim', fsDir]);
  assert.ok(device.trims.length > trimsBefore, 'fstrim reached device.trim');
  await sh(['umount', fsDir]);
  ext4Mounted = false;

  await sh(['e2fsck', '-fn', loop]);
  // The device's own bytes hold the filesystem: check a copy, without the loop device.
  const image = join(root, 'copy.img');
  await writeFile(image, device.bytes);
  await sh(['e2fsck', '-fn', image]);
  assert.equal(sha(await sh(['debugfs', '-R', 'cat /data.bin', image])), sha(data));
  assert.equal((await sh(['debugfs', '-R', 'cat /small-9.txt', image])).toString(), 'file 9\n'.repeat(10));

  await sh(['mount', '-t', 'ext4', '-o', 'ro', loop, fsDir]);
  ext4Mounted = true;
  assert.equal(sha(await readFile(join(fsDir, 'data.bin'))), sha(data));
  await sh(['umount', fsDir]);
  ext4Mounted = false;
});

test('teardown: losetup -d, then unmount; nothing stays attached or mounted', T, async () => {
  const f = fuse as FuseMount;
  await sh(['losetup', '-d', loop]);
  for (let i = 0; i < 50 && (await text(['losetup', '-a'])).includes(f.path); i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(!(await text(['losetup', '-a'])).includes(f.path), 'loop detached');
  loop = '';
  await f.unmount({ abortAfterMs: 10_000 });
  await f.closed;
  assert.ok(!mountsText().includes(f.mountpoint), 'FUSE unmounted');
});
