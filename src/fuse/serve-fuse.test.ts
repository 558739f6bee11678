/**
 * serveFuse() against the real kernel (needs root and /dev/fuse). Every file access
 * here is asynchronous or in a child process: the device runs on this thread, so a
 * synchronous access to the served file would deadlock the test.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { open, readdir, readFile, stat } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { randomFillSync, createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { serveFuse } from './serve-fuse.ts';
import { parkedReaderCount, prepareFuseReaders, releaseParkedReaders } from './serve-fuse-fd.ts';
import type { FuseMount, ServeFuseOptions } from './serve-fuse.ts';
import { abortFuseConnection, findMount } from './fuse-connection.ts';
import { MemoryBlockDevice } from '../../test/support/memory-block-device.ts';
import { DataCorruptionError, InvalidArgumentError, NotFoundError, FailedPreconditionError } from '../io/errors.ts';

const run = promisify(execFile);
const skip = process.getuid?.() !== 0 || !existsSync('/dev/fuse') ? 'needs root and /dev/fuse' : false;
const T = { timeout: 60_000, skip };

let root = '';
const mounts: FuseMount[] = [];

before(() => {
  root = mkdtempSync(join(tmpdir(), 'obd-fuse-'));
});

after(async () => {
  for (const m of mounts) await m.unmount({ abortAfterMs: 2000 }).catch(() => {});
  // Belt and braces: nothing of ours may stay mounted, even if a test failed midway.
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const mnt = line.split(' ')[1];
    if (mnt !== undefined && mnt.startsWith(root)) await run('umount', ['-l', mnt]).catch(() => {});
  }
  rmSync(root, { recursive: true, force: true });
});

async function serve(device: MemoryBlockDevice, options: Partial<ServeFuseOptions> = {}): Promise<FuseMount> {
  const mountpoint = mkdtempSync(join(root, 'mnt-'));
  const m = await serveFuse(device, { mountpoint, ...options });
  mounts.push(m);
  return m;
}

function randomDevice(size: number, options?: ConstructorParameters<typeof MemoryBlockDevice>[1]): MemoryBlockDevice {
  return new MemoryBlockDevice(randomFillSync(new Uint8Array(size)), options);
}

function mounted(path: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === path);
}

function threads(): number {
  return readdirSync('/proc/self/task').length;
}

/** Resolves `p` or fails the test after `ms` instead of hanging. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function sha(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

test('serveFuse() exposes the device as one file whose bytes are the device bytes', T, async () => {
  const dev = randomDevice(16 << 20);
  const m = await serve(dev);
  assert.equal(m.path, join(m.mountpoint, 'block'));
  assert.ok(m.connection > 0);
  assert.equal(m.init.maxWrite, 1 << 20);
  assert.deepEqual(await readdir(m.mountpoint), ['block']);
  const st = await stat(m.path);
  assert.ok(st.isFile());
  assert.equal(st.size, dev.size);
  assert.equal(st.mode & 0o777, 0o644);
  assert.equal(sha(await readFile(m.path)), sha(dev.bytes), 'whole file');

  const fh = await open(m.path, 'r');
  try {
    // Random offsets and lengths, aligned or not, several in flight at once.
    let seed = 7;
    const next = (n: number): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % n;
    const reads = Array.from({ length: 64 }, () => {
      const offset = next(dev.size);
      const length = 1 + next(Math.min(300_000, dev.size - offset));
      return { offset, length };
    });
    await Promise.all(
      reads.map(async ({ offset, length }) => {
        const buf = Buffer.alloc(length);
        const { bytesRead } = await fh.read(buf, 0, length, offset);
        assert.equal(bytesRead, length);
        assert.ok(buf.equals(dev.bytes.subarray(offset, offset + length)), `read ${length} at ${offset}`);
      }),
    );
    const tail = Buffer.alloc(4096);
    assert.equal((await fh.read(tail, 0, 4096, dev.size - 100)).bytesRead, 100, 'short read at the end');
    assert.equal((await fh.read(tail, 0, 4096, dev.size)).bytesRead, 0, 'EOF');
  } finally {
    await fh.close();
  }
});

test('writes through the file reach the device; fsync flushes it; resizing is refused', T, async () => {
  const dev = randomDevice(4 << 20);
  const m = await serve(dev);
  const model = dev.bytes.slice();
  const fh = await open(m.path, 'r+');
  try {
    const writes = [
      { offset: 0, length: 4096 },
      { offset: 1001, length: 5 }, // unaligned: read-modify-write underneath
      { offset: 65536 + 17, length: 200_000 },
      { offset: (1 << 20) - 300, length: 1 << 20 }, // crosses 1 MiB, more than one request
    ];
    for (const [i, w] of writes.entries()) {
      const data = Buffer.alloc(w.length, i + 1);
      const { bytesWritten } = await fh.write(data, 0, w.length, w.offset);
      assert.equal(bytesWritten, w.length);
      model.set(data, w.offset);
    }
    assert.ok(Buffer.from(dev.bytes).equals(model), 'device bytes are the written model');
    const back = Buffer.alloc(1 << 20);
    await fh.read(back, 0, back.length, 500_000);
    assert.ok(back.equals(model.subarray(500_000, 500_000 + back.length)), 'reads see the writes');

    const flushes = dev.counts.flush;
    await fh.sync();
    assert.equal(dev.counts.flush, flushes + 1);

    await assert.rejects(fh.write(Buffer.alloc(512), 0, 512, dev.size), { code: 'ENOSPC' });
    await assert.rejects(fh.truncate(0), { code: 'EPERM' });
    assert.equal((await fh.stat()).size, dev.size, 'size unchanged');
  } finally {
    await fh.close();
  }
});

test('fallocate --punch-hole reaches device.trim and reads back as zeros', T, async () => {
  const dev = randomDevice(4 << 20);
  const m = await serve(dev);
  await run('fallocate', ['--punch-hole', '--offset', '8192', '--length', '131072', m.path]);
  assert.deepEqual(dev.trims, [{ offset: 8192, length: 131072 }]);
  await run('fallocate', ['--zero-range', '--keep-size', '--offset', '1000', '--length', '3000', m.path]);
  assert.deepEqual(dev.trims.at(-1), { offset: 1024, length: 2560 }, 'aligned middle trimmed, edges written');
  const back = await readFile(m.path);
  assert.ok(back.subarray(8192, 8192 + 131072).every((b) => b === 0));
  assert.ok(back.subarray(1000, 4000).every((b) => b === 0));
  assert.ok(back.subarray(4000, 8192).equals(dev.bytes.subarray(4000, 8192)));
  assert.notEqual(back[999], undefined);
});

test('a read-only device is mounted read-only: reads work, writers get EROFS', T, async () => {
  const dev = randomDevice(1 << 20, { readOnly: true });
  const m = await serve(dev);
  assert.equal((await stat(m.path)).mode & 0o777, 0o444);
  assert.ok((await readFile(m.path)).equals(dev.bytes));
  await assert.rejects(open(m.path, 'r+'), { code: 'EROFS' });
  await assert.rejects(run('fallocate', ['--punch-hole', '--offset', '0', '--length', '4096', m.path]), /Read-only|Bad file descriptor/);
  assert.equal(dev.counts.write + dev.counts.trim, 0);
});

test('device errors become EIO and the server keeps serving', T, async () => {
  const dev = randomDevice(1 << 20);
  dev.hook = (op, offset) => {
    if (offset === 65536) throw new DataCorruptionError(`Cannot ${op} block 128: bad CRC`);
  };
  const m = await serve(dev);
  const fh = await open(m.path, 'r+');
  try {
    await assert.rejects(fh.read(Buffer.alloc(4096), 0, 4096, 65536), { code: 'EIO' });
    await assert.rejects(fh.write(Buffer.alloc(4096), 0, 4096, 65536), { code: 'EIO' });
    const ok = Buffer.alloc(4096);
    await fh.read(ok, 0, 4096, 0);
    assert.ok(ok.equals(dev.bytes.subarray(0, 4096)));
  } finally {
    await fh.close();
  }
});

test('directIo decides whether the FUSE file keeps a page cache', T, async () => {
  // With FOPEN_DIRECT_IO (default) every read reaches the device; without it a second
  // read of the same range through one open file is served from the page cache.
  for (const directIo of [true, false]) {
    const dev = randomDevice(1 << 20);
    const m = await serve(dev, { directIo });
    const fh = await open(m.path, 'r');
    try {
      await fh.read(Buffer.alloc(65536), 0, 65536, 0);
      const before = dev.counts.read;
      const again = Buffer.alloc(65536);
      await fh.read(again, 0, 65536, 0);
      assert.ok(again.equals(dev.bytes.subarray(0, 65536)));
      assert.equal(dev.counts.read > before, directIo, `directIo ${directIo}`);
    } finally {
      await fh.close();
    }
    await m.unmount();
  }
});

test('unmount() detaches a busy mount lazily and aborts it after abortAfterMs', T, async () => {
  const dev = randomDevice(1 << 20);
  const m = await serve(dev);
  const fh = await open(m.path, 'r');
  const started = Date.now();
  await within(m.unmount({ abortAfterMs: 300 }), 10_000, 'unmount');
  assert.ok(Date.now() - started >= 300, 'waited for the user first');
  assert.equal(mounted(m.mountpoint), false);
  await within(m.closed, 1000, 'closed');
  await assert.rejects(fh.read(Buffer.alloc(512), 0, 512, 0)); // ENOTCONN: the connection is gone
  await fh.close().catch(() => {});
});

test('unmount() of a mount whose last user leaves in time does not abort', T, async () => {
  const dev = randomDevice(1 << 20);
  const m = await serve(dev);
  const fh = await open(m.path, 'r');
  const unmounting = m.unmount({ abortAfterMs: 20_000 });
  await sleep(200);
  const buf = Buffer.alloc(4096);
  await fh.read(buf, 0, 4096, 4096); // still served while lazily detached
  assert.ok(buf.equals(dev.bytes.subarray(4096, 8192)));
  await fh.close();
  await within(unmounting, 5000, 'unmount after the last close');
  assert.equal(mounted(m.mountpoint), false);
});

test('an aborted connection stops the readers and detaches the dead mount', T, async () => {
  const fusectlBefore = mounted('/sys/fs/fuse/connections');
  const before = threads();
  const m = await serve(randomDevice(1 << 20), { workers: 3 });
  assert.equal(threads() >= before + 3, true);
  await abortFuseConnection(m.connection);
  await within(m.closed, 5000, 'closed after abort');
  assert.equal(mounted(m.mountpoint), false);
  assert.equal((await findMount(m.mountpoint))?.fstype === 'fuse.obd', false);
  await within(m.unmount(), 1000, 'unmount after close');
  assert.equal(mounted('/sys/fs/fuse/connections'), fusectlBefore, 'fusectl left as it was');
});

test('bad arguments and failed mounts reject and leave no thread, fd or mount behind', T, async () => {
  const dev = randomDevice(1 << 20);
  await assert.rejects(serveFuse(dev, { mountpoint: join(root, 'missing') }), NotFoundError);
  const file = join(root, 'a-file');
  writeFileSync(file, '');
  await assert.rejects(serveFuse(dev, { mountpoint: file }), InvalidArgumentError);
  const dir = mkdtempSync(join(root, 'mnt-'));
  await assert.rejects(serveFuse(dev, { mountpoint: dir, name: 'a/b' }), InvalidArgumentError);
  await assert.rejects(serveFuse(dev, { mountpoint: dir, workers: 0 }), InvalidArgumentError);

  // A `mount` that fails (a fake earlier on PATH) after /dev/fuse is open and readers run.
  const bin = join(root, 'fake-bin');
  mkdirSync(bin);
  writeFileSync(join(bin, 'mount'), '#!/bin/sh\necho "mount: simulated failure" >&2\nexit 32\n');
  chmodSync(join(bin, 'mount'), 0o755);
  const fds = readdirSync('/proc/self/fd').length;
  const tasks = threads();
  const path = process.env['PATH'];
  process.env['PATH'] = `${bin}:${path}`;
  process.env['OBD_MOUNT_SYSCALLS'] = 'off'; // mount(8), not mount(2)
  try {
    await assert.rejects(serveFuse(dev, { mountpoint: dir, workers: 4 }), (e: unknown) => {
      assert.ok(e instanceof FailedPreconditionError);
      assert.match(e.message, /mount exited 32: mount: simulated failure/);
      return true;
    });
  } finally {
    process.env['PATH'] = path;
    delete process.env['OBD_MOUNT_SYSCALLS'];
  }
  assert.equal(readdirSync('/proc/self/fd').length, fds, 'the /dev/fuse fd is closed');
  for (let i = 0; i < 50 && threads() > tasks; i++) await sleep(20);
  assert.equal(threads(), tasks, 'reader threads exited');
  assert.equal(mounted(dir), false);
});

test('reader threads parked ahead of need serve the next device; the ones left over end on release', T, async () => {
  await prepareFuseReaders([], { parked: 3 });
  assert.equal(parkedReaderCount(), 3);
  const dev = randomDevice(4 << 20);
  const before = threads();
  const m = await serve(dev, { workers: 2 });
  assert.equal(parkedReaderCount(), 1, 'two of the three were adopted');
  assert.equal(threads(), before, 'no reader thread was started for the mount');
  const fh = await open(m.path, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 1 << 20);
    assert.equal(bytesRead, buf.length);
    assert.equal(sha(buf), sha(dev.bytes.subarray(1 << 20, 2 << 20)));
  } finally {
    await fh.close();
  }
  await m.unmount();
  await releaseParkedReaders();
  assert.equal(parkedReaderCount(), 0);
  for (let i = 0; i < 100 && threads() >= before; i++) await sleep(20);
  assert.ok(threads() < before, 'the released and the serving threads have ended');
});
