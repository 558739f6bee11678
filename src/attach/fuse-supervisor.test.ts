/**
 * superviseFuse() against the real kernel (needs root and /dev/fuse): the supervisor
 * runs here, the device is served by test/support/memory-fuse-child.ts, which can delay
 * reads, fail to open, or kill itself on a given read.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PreparedServer, superviseFuse } from './fuse-supervisor.ts';
import type { SupervisedFuse, SuperviseFuseOptions } from './fuse-supervisor.ts';
import { NotFoundError } from '../io/errors.ts';
import { patternByte, type MemoryChildSpec } from '../../test/support/memory-fuse-child.ts';
import { startFuseWatchdog } from '../../test/support/fuse-watchdog.ts';

const skip = process.getuid?.() !== 0 || !existsSync('/dev/fuse') ? 'needs root and /dev/fuse' : false;
const T = { timeout: 90_000, skip };
const CHILD = fileURLToPath(new URL('../../test/support/memory-fuse-child.ts', import.meta.url));
const SERVER = { command: process.execPath, args: ['--import', 'tsx', CHILD] };
const SIZE = 8 << 20;

let root = '';
const started: SupervisedFuse[] = [];
let watchdog: { pid: number; stop(): void } | undefined;

before(() => {
  root = mkdtempSync(join(tmpdir(), 'obd-supervisor-'));
  if (!skip) watchdog = startFuseWatchdog(root, 240);
});

after(async () => {
  watchdog?.stop();
  for (const s of started) await s.unmount({ abortAfterMs: 1000 }).catch(() => {});
  for (const line of readFileSync('/proc/self/mounts', 'utf8').split('\n')) {
    const mnt = line.split(' ')[1];
    if (mnt !== undefined && mnt.startsWith(root)) spawnSync('umount', ['-l', mnt]);
  }
  for (const pid of children()) process.kill(pid, 'SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

/** Live child processes of this process (but the watchdog). */
function children(): number[] {
  const text = readFileSync(`/proc/self/task/${process.pid}/children`, 'utf8').trim();
  return text === '' ? [] : text.split(' ').map(Number).filter((pid) => pid !== watchdog?.pid);
}

function mounted(path: string): boolean {
  return readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === path);
}

async function supervise(spec: Partial<MemoryChildSpec>, options: Partial<SuperviseFuseOptions> = {}): Promise<SupervisedFuse> {
  const mountpoint = mkdtempSync(join(root, 'mnt-'));
  const s = await superviseFuse({ mountpoint, server: SERVER, device: { size: SIZE, seed: 7, ...spec }, ...options });
  started.push(s);
  return s;
}

function expectedBytes(offset: number, length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = patternByte(offset + i, 7);
  return b;
}

/** Lines `pid op offset length` of the child's device log. */
function logLines(path: string): Array<{ pid: number; op: string; offset: number }> {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const [pid, op, offset] = l.split(' ');
      return { pid: Number(pid), op: op as string, offset: Number(offset) };
    });
}

test('superviseFuse() serves through a child; reads in flight when it is killed complete with the right bytes', T, async () => {
  const log = join(root, 'reads.log');
  const s = await supervise({ log, readDelayMs: 400 });
  assert.equal(s.size, SIZE);
  assert.equal(s.readOnly, true);
  const first = s.serverPid;
  assert.ok(first > 0 && first !== process.pid);
  const fh = await open(s.path, 'r');
  try {
    const offsets = [0, 1 << 20, 3 << 20, 5 << 20];
    const reads = offsets.map(async (offset) => {
      const buf = Buffer.alloc(65536);
      const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
      return { offset, bytesRead, buf };
    });
    // Kill the server while all four reads are inside the device.
    for (let i = 0; i < 500 && logLines(log).filter((l) => l.pid === first).length < offsets.length; i++) await sleep(10);
    assert.equal(logLines(log).filter((l) => l.pid === first).length, offsets.length, 'four reads reached the first server');
    process.kill(first, 'SIGKILL');
    for (const r of await Promise.all(reads)) {
      assert.equal(r.bytesRead, 65536);
      assert.ok(r.buf.equals(expectedBytes(r.offset, 65536)), `read at ${r.offset}`);
    }
    const second = s.serverPid;
    assert.ok(second > 0 && second !== first, 'another process serves now');
    assert.equal(s.restarts, 1);
    const resent = logLines(log).filter((l) => l.pid === second).map((l) => l.offset);
    assert.deepEqual([...resent].sort((a, b) => a - b), offsets, 'the kernel resent the four unanswered reads');
    const after = Buffer.alloc(4096);
    await fh.read(after, 0, 4096, SIZE - 4096);
    assert.ok(after.equals(expectedBytes(SIZE - 4096, 4096)));
  } finally {
    await fh.close();
  }
  await s.unmount();
  assert.equal(mounted(s.mountpoint), false);
  assert.deepEqual(children(), [], 'no serving or spare process left');
});

test('a child that cannot open the device fails superviseFuse() with its error and leaves nothing', T, async () => {
  const mountpoint = mkdtempSync(join(root, 'mnt-'));
  await assert.rejects(
    superviseFuse({ mountpoint, server: SERVER, device: { size: SIZE, seed: 7, failOpen: 'Cannot open layer 0: no such blob' } }),
    (e: unknown) => e instanceof NotFoundError && /no such blob/.test(e.message),
  );
  assert.equal(mounted(mountpoint), false);
  for (let i = 0; i < 100 && children().length > 0; i++) await sleep(20);
  assert.deepEqual(children(), []);
  await assert.rejects(superviseFuse({ mountpoint, server: { command: '/nonexistent/obd', args: [] }, device: {} }), /serving process/);
  assert.equal(mounted(mountpoint), false);
});

test('an unmount from outside ends the supervision: closed resolves, no process stays', T, async () => {
  const s = await supervise({}, { spare: true });
  for (let i = 0; i < 300 && children().length < 2; i++) await sleep(20);
  const r = spawnSync('umount', [s.mountpoint]);
  assert.equal(r.status, 0, r.stderr?.toString());
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([s.closed, new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('closed did not resolve')), 10_000)))]);
  clearTimeout(timer);
  for (let i = 0; i < 100 && children().length > 0; i++) await sleep(20);
  assert.deepEqual(children(), []);
  await s.unmount();
});

test('a request that kills every server makes the supervisor give up: the caller gets an error, not a hang', T, async () => {
  const s = await supervise({ crashOnRead: 1 << 20 }, { maxFailures: 2, spare: false });
  const fh = await open(s.path, 'r');
  try {
    const ok = Buffer.alloc(4096);
    await fh.read(ok, 0, 4096, 0);
    assert.ok(ok.equals(expectedBytes(0, 4096)));
    await assert.rejects(fh.read(Buffer.alloc(4096), 0, 4096, 1 << 20), (e: NodeJS.ErrnoException) => ['ENOTCONN', 'EIO', 'ECONNABORTED'].includes(e.code ?? ''));
  } finally {
    await fh.close().catch(() => {});
  }
  await s.closed;
  // Two quick deaths in a row: the first server (if it died within 500 ms of serving) and one or two restarted ones.
  assert.ok(s.restarts >= 1 && s.restarts <= 2, `restarts ${s.restarts}`);
  assert.equal(mounted(s.mountpoint), false);
  for (let i = 0; i < 100 && children().length > 0; i++) await sleep(20);
  assert.deepEqual(children(), []);
});

/** Open `/dev/fuse` fds of this process. */
function fuseFds(): number {
  return readdirSync('/proc/self/fd').filter((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === '/dev/fuse';
    } catch {
      return false;
    }
  }).length;
}

test('a prepared server becomes the first child; one prepared for another command is closed and replaced', T, async () => {
  const parkedServer = { command: process.execPath, args: ['--import', 'tsx', CHILD, '--parked', '2'] };
  const prepared = PreparedServer.start(parkedServer);
  const pid = prepared.pid;
  assert.ok(pid > 0 && children().includes(pid));
  const s = await supervise({}, { server: parkedServer, prepared, spare: false });
  assert.equal(s.serverPid, pid, 'the prepared child serves');
  assert.equal(prepared.pid, -1, 'taken');
  const fh = await open(s.path, 'r');
  try {
    const buf = Buffer.alloc(65536);
    await fh.read(buf, 0, buf.length, 2 << 20);
    assert.ok(buf.equals(expectedBytes(2 << 20, 65536)));
  } finally {
    await fh.close();
  }
  await s.unmount();
  assert.deepEqual(children(), []);

  const other = PreparedServer.start(parkedServer);
  const otherPid = other.pid;
  const t = await supervise({}, { prepared: other, spare: false });
  assert.notEqual(t.serverPid, otherPid, 'a child of the command asked for serves');
  for (let i = 0; i < 100 && children().includes(otherPid); i++) await sleep(20);
  assert.equal(children().includes(otherPid), false, 'the mismatched prepared child has ended');
  await t.unmount();
});

test('closing an unused prepared server ends its child and closes its /dev/fuse', T, async () => {
  const before = fuseFds();
  const prepared = PreparedServer.start(SERVER);
  assert.equal(fuseFds(), before + 1);
  const pid = prepared.pid;
  prepared.close();
  prepared.close();
  assert.equal(prepared.pid, -1);
  assert.equal(fuseFds(), before);
  for (let i = 0; i < 100 && children().includes(pid); i++) await sleep(20);
  assert.equal(children().includes(pid), false);
});
