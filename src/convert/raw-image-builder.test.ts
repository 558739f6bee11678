import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buildTar } from './tar-writer.ts';
import { DirectoryApplier } from './directory-applier.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import { diffInto, RawImageBuilder, rangeSegments, scratchMountSpec, unionExtents } from './raw-image-builder.ts';
import { openDevice } from '../device/open-device.ts';
import { exportRaw } from '../device/export-raw.ts';

const enc = new TextEncoder();
const root = process.getuid?.() === 0 && spawnSync('losetup', ['--version']).status === 0;
const skip = root ? false : 'needs root and losetup';

test('unionExtents merges, widens to 4 KiB blocks and clips', () => {
  assert.deepEqual(
    unionExtents(
      [
        [0, 4096],
        [10_000, 12_000],
      ],
      [
        [4096, 5000],
        [20_480, 30_000],
      ],
      28_672,
    ),
    [
      [0, 12_288],
      [20_480, 28_672],
    ],
  );
  assert.deepEqual(unionExtents([], [], 4096), []);
});

test('diffInto finds exactly the changed blocks, zeros included, and updates the shadow', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-diff-'));
  try {
    const size = 1 << 20;
    const disk = await open(join(dir, 'disk'), 'w+');
    const shadow = await open(join(dir, 'shadow'), 'w+');
    const block = (fill: number): Uint8Array => new Uint8Array(4096).fill(fill);
    // shadow: data at blocks 1, 2, 3, 5; disk: 1 same, 2 and 3 changed, 5 zeroed, 7 new, 9 zeros over a hole.
    for (const [b, f] of [[1, 1], [2, 2], [3, 3], [5, 5]] as const) await shadow.write(block(f), 0, 4096, b * 4096);
    for (const [b, f] of [[1, 1], [2, 9], [3, 8], [5, 0], [7, 7], [9, 0]] as const) await disk.write(block(f), 0, 4096, b * 4096);
    await disk.truncate(size);
    await shadow.truncate(size);
    const expected = [
      [2 * 4096, 4 * 4096],
      [5 * 4096, 6 * 4096],
      [7 * 4096, 8 * 4096],
    ];
    const before = readFileSync(join(dir, 'shadow'));
    assert.deepEqual(await diffInto(disk, shadow, { size, update: false }), expected);
    assert.deepEqual(readFileSync(join(dir, 'shadow')), before, 'update: false leaves the shadow as it was');
    assert.deepEqual(await diffInto(disk, shadow, { size }), [
      [2 * 4096, 4 * 4096],
      [5 * 4096, 6 * 4096],
      [7 * 4096, 8 * 4096],
    ]);
    const got = new Uint8Array(4096);
    await shadow.read(got, 0, 4096, 3 * 4096);
    assert.ok(got.every((x) => x === 8), 'the shadow took the new content');
    await shadow.read(got, 0, 4096, 5 * 4096);
    assert.ok(got.every((x) => x === 0), 'and the zeros');
    assert.deepEqual(await diffInto(disk, shadow, { size }), [], 'a second diff finds nothing');
    await disk.close();
    await shadow.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('diffInto compares a last partial block and names a failed read', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-diff-'));
  try {
    const size = 3 * 4096 + 512; // the file ends inside a block
    const disk = await open(join(dir, 'disk'), 'w+');
    const shadow = await open(join(dir, 'shadow'), 'w+');
    await disk.write(new Uint8Array(512).fill(7), 0, 512, 3 * 4096);
    await disk.truncate(size);
    await shadow.truncate(size);
    assert.deepEqual(await diffInto(disk, shadow, { size }), [[3 * 4096, size]]);
    const got = new Uint8Array(512);
    await shadow.read(got, 0, 512, 3 * 4096);
    assert.ok(got.every((x) => x === 7), 'the partial block was copied');
    await disk.close();
    const writeOnly = await open(join(dir, 'disk'), 'a'); // pread fails: EBADF
    await assert.rejects(diffInto(writeOnly, shadow, { size }), (e: Error) => e instanceof FailedPreconditionError && /compare the disk image with its shadow: .*cannot read: Bad file descriptor/.test(e.message));
    await writeOnly.close();
    await shadow.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('scratchMountSpec adds nobarrier to ext4 only, and keeps an explicit barrier option', () => {
  assert.deepEqual(scratchMountSpec({ fstype: 'ext4', mountOptions: ['discard'], mkfsOptions: [] }).mountOptions, ['discard', 'nobarrier']);
  assert.deepEqual(scratchMountSpec({ fstype: 'ext4', mountOptions: ['barrier=1'], mkfsOptions: [] }).mountOptions, ['barrier=1']);
  assert.deepEqual(scratchMountSpec({ fstype: 'xfs', mountOptions: [], mkfsOptions: [] }).mountOptions, []);
});

test('rangeSegments maps byte ranges to same-offset entries within the entry length limit', () => {
  const segs = rangeSegments([
    [4096, 8192],
    [1 << 20, (1 << 20) + 20 * 2 ** 20],
  ]);
  assert.deepEqual(segs[0], { offset: 8, length: 8, moffset: 8, zeroed: false, tag: 0 });
  assert.ok(segs.slice(1).every((s) => s.length <= 16383 && s.length % 8 === 0 && s.offset === s.moffset));
  assert.equal(segs.slice(1).reduce((n, s) => n + s.length, 0) * 512, 20 * 2 ** 20);
  assert.equal(segs.length, 4);
});

/** Mounts the merged view of `layers` read-only (exported to a raw file) and runs `fn` on it. */
async function withStack(layers: string[], dir: string, fn: (mnt: string) => void): Promise<void> {
  const device = await openDevice({ repoBlobUrl: '', lowers: layers.map((file) => ({ file, dir: '', digest: '', size: 0, targetFile: '', targetDigest: '', gzipIndex: '' })), upper: undefined, resultFile: '', accelerationLayer: false, recordTracePath: '', download: undefined });
  const img = join(dir, `merged-${layers.length}.img`);
  rmSync(img, { force: true });
  try {
    await exportRaw(device, img);
  } finally {
    await device.close();
  }
  // Each layer ends with a clean file system (remounted read-only before it was taken).
  assert.match(execFileSync('dumpe2fs', ['-h', img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), /^Filesystem state:\s+clean$/m);
  const mnt = join(dir, 'check');
  mkdirSync(mnt, { recursive: true });
  const loop = execFileSync('losetup', ['-f', '--show', '-r', img], { encoding: 'utf8' }).trim();
  try {
    execFileSync('mount', ['-t', 'ext4', '-o', 'ro,noload', loop, mnt]);
    try {
      fn(mnt);
    } finally {
      execFileSync('umount', [mnt]);
    }
  } finally {
    execFileSync('losetup', ['-d', loop]);
    rmSync(img, { force: true });
  }
}

test('layers built on one disk, and on a disk made from reused lowers, stack to the applied trees', { skip, timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join('/var/tmp', 'obd-rawimg-'));
  const big = new Uint8Array(300_000).map((_, i) => (i * 7) % 251);
  const layerA = buildTar([
    { path: 'etc/', type: 'directory' },
    { path: 'etc/keep', type: 'file', data: enc.encode('kept') },
    { path: 'etc/gone', type: 'file', data: big },
    { path: 'etc/edit', type: 'file', data: enc.encode('before') },
  ]);
  const layerB = buildTar([
    { path: 'etc/.wh.gone', type: 'file' },
    { path: 'etc/edit', type: 'file', data: enc.encode('after') },
    { path: 'etc/new', type: 'file', data: big.slice(0, 5000) },
  ]);
  const zfile = { algorithm: 'lz4' as const, blockSize: 4096 };
  const check = (mnt: string): void => {
    assert.deepEqual(readdirSync(join(mnt, 'etc')).sort(), ['edit', 'keep', 'new']);
    assert.equal(readFileSync(join(mnt, 'etc/edit'), 'utf8'), 'after');
    assert.equal(readFileSync(join(mnt, 'etc/keep'), 'utf8'), 'kept');
    assert.deepEqual(readFileSync(join(mnt, 'etc/new')), Buffer.from(big.slice(0, 5000)));
  };
  try {
    const one = await RawImageBuilder.open({ dir: join(dir, 'disk1'), lowers: [], virtualSize: 1 << 30, mkfs: true, applier: new DirectoryApplier() });
    let fileA: string;
    let fileB: string;
    try {
      fileA = await (await one.build(Readable.from([layerA]), { dir: join(dir, 'A'), uuid: '', zfile })).committed;
      fileB = await (await one.build(Readable.from([layerB]), { dir: join(dir, 'B'), uuid: '', zfile })).committed;
    } finally {
      await one.close();
    }
    assert.deepEqual(readdirSync(join(dir, 'disk1')), ['mnt'], 'the disk and its shadow are deleted');
    assert.deepEqual(readdirSync(join(dir, 'B')), ['overlaybd.commit']);
    assert.ok(statSync(fileB).size < statSync(fileA).size, 'the second layer holds only what changed');
    await withStack([fileA], dir, (mnt) => assert.equal(readFileSync(join(mnt, 'etc/edit'), 'utf8'), 'before'));
    await withStack([fileA, fileB], dir, check);

    // The prefix [A] reused (as from the conversion cache): the disk starts as its content.
    const two = await RawImageBuilder.open({ dir: join(dir, 'disk2'), lowers: [fileA], virtualSize: 0, mkfs: false, applier: new DirectoryApplier() });
    let fileB2: string;
    try {
      assert.equal(two.size, 1 << 30);
      // The last layer is committed from the disk itself; nothing may follow it.
      fileB2 = await (await two.build(Readable.from([layerB]), { dir: join(dir, 'B2'), uuid: '', zfile, last: true })).committed;
      await assert.rejects(two.build(Readable.from([layerB]), { dir: join(dir, 'C'), uuid: '', zfile }), { name: 'FailedPreconditionError', message: /last layer/ });
    } finally {
      await two.close();
    }
    await withStack([fileA, fileB2], dir, check);
  } finally {
    spawnSync('sh', ['-c', `grep -o "${dir}[^ ]*" /proc/mounts | xargs -r -n1 umount -l`]);
    for (const line of spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout.split('\n')) {
      if (line.includes(dir)) spawnSync('losetup', ['-d', line.split(':')[0] as string]);
    }
    rmSync(dir, { recursive: true, force: true });
  }
});
