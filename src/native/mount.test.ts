import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { attachLoopSyscall, mountFlags, mountWithOptions, remountSyscall } from './mount.ts';

const ROOT = process.getuid?.() === 0 ? {} : { skip: 'needs root (loop devices, mounts)' };

test('mountFlags turns mount(8) options into flags, later options winning, and keeps the rest as data', () => {
  assert.deepEqual(mountFlags(['ro', 'noload', 'discard']), { flags: 1, data: 'noload,discard' });
  assert.deepEqual(mountFlags(['ro', 'rw', 'nosuid', 'nodev']), { flags: 2 | 4, data: '' });
  assert.deepEqual(mountFlags(['fd=7', 'rootmode=40000', 'allow_other']), { flags: 0, data: 'fd=7,rootmode=40000,allow_other' });
});

test('attachLoopSyscall, mountWithOptions and remountSyscall attach, mount and remount an ext4 image', ROOT, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-mount-syscall-'));
  const img = join(dir, 'fs.img');
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  writeFileSync(img, '');
  execFileSync('truncate', ['-s', '64M', img]);
  execFileSync('mkfs.ext4', ['-q', '-F', img]);
  let dev: string | number | undefined;
  let mounted = false;
  try {
    dev = await attachLoopSyscall(img, { readOnly: false, directIo: true });
    assert.equal(typeof dev, 'string', `attach failed: ${String(dev)}`);
    assert.equal(readFileSync(`/sys/block/${String(dev).slice(5)}/loop/backing_file`, 'utf8').trim(), img);
    assert.equal(await mountWithOptions({ source: String(dev), target: mnt, fstype: 'ext4', options: ['rw', 'discard'] }), 0);
    mounted = true;
    writeFileSync(join(mnt, 'f'), 'hello');
    assert.equal(await remountSyscall(mnt, false), 0);
    assert.throws(() => writeFileSync(join(mnt, 'g'), 'x'), /EROFS/);
    const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === mnt) ?? '';
    assert.match(line, / ro,/);
    assert.match(line, /discard/, 'the file-system options stay');
    assert.equal(await mountWithOptions({ source: String(dev), target: join(dir, 'missing'), fstype: 'ext4', options: [] }), -2, 'ENOENT comes back as -errno');
    assert.equal(await attachLoopSyscall(join(dir, 'no-such-file'), { readOnly: true, directIo: false }), -2);
  } finally {
    if (mounted) execFileSync('umount', [mnt]);
    if (typeof dev === 'string') execFileSync('losetup', ['-d', dev]);
    rmSync(dir, { recursive: true, force: true });
  }
});
