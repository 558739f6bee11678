/**
 * Issue 4: surviving a crash of the serving process (needs root, /dev/fuse, loop).
 *
 * `obd mount` makes the `obd attach` process a supervisor that owns /dev/fuse, the FUSE
 * mount, the loop device and the ext4 mount; a child serves the device. The bug this
 * guards against: FUSE-based attach lost the mount when the serving process died (every
 * later read failed with EIO). Here the serving child is killed with SIGKILL again and
 * again while a reader hashes every file of the mounted image in a loop (page cache
 * dropped before each round, so reads reach the device): every round must see the right
 * hashes and no command may fail. A writable mount must keep what was written through
 * the kills. After each, the session unmounts cleanly and leaves no mount, loop device or
 * process behind.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';
import { listSessions, type SessionRecord } from '../src/attach/session.ts';
import { createWritableLayer } from '../src/formats/lsmt/writable-layer.ts';
import { commitFile } from '../src/formats/lsmt/commit-files.ts';
import { openFileReader } from '../src/io/file-reader.ts';
import { startFuseWatchdog } from './support/fuse-watchdog.ts';

const skip =
  process.getuid?.() !== 0 || !existsSync('/dev/fuse') || !existsSync('/dev/loop-control') ? 'needs root, /dev/fuse and loop devices' : false;
const KILLS = 20;

let dir = '';
let runDir = '';
let config = '';
/** sha256 of every file of the image, by path relative to the root. */
const expected = new Map<string, string>();
/** Every pid a session reported (supervisors and servers): none may survive a test. */
const pids = new Set<number>();
let watchdog: { pid: number; stop(): void } | undefined;

async function obd(...args: string[]): Promise<string> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
  return io.stdout;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.startsWith('Z');
  } catch {
    return false;
  }
}

async function session(mnt: string): Promise<SessionRecord> {
  const s = (await listSessions(runDir)).find((r) => r.mountpoint === mnt);
  assert.ok(s !== undefined, `no session for ${mnt}`);
  pids.add(s.pid);
  if (s.serverPid !== undefined) pids.add(s.serverPid);
  return s;
}

/** Waits until the session names a live serving process other than `old`. */
async function nextServer(mnt: string, old: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const s = await session(mnt).catch(() => undefined);
    const pid = s?.serverPid;
    if (pid !== undefined && pid !== old && pid !== s?.pid && alive(pid)) return pid;
    await sleep(20);
  }
  throw new Error(`no new serving process for ${mnt} within ${timeoutMs} ms`);
}

function assertNothingLeft(): void {
  const mounts = readFileSync('/proc/mounts', 'utf8');
  assert.ok(!mounts.includes(dir), `mounts left under ${dir}:\n${mounts}`);
  const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout;
  assert.ok(!loops.includes(runDir), `loop devices left: ${loops}`);
  const left = [...pids].filter(alive);
  assert.deepEqual(left, [], `processes left: ${left.join(', ')}`);
}

/** `size` bytes of deterministic pseudo-random data. */
function bytes(size: number, seed: number): Buffer {
  const out = Buffer.alloc(size);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i + 4 <= size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32LE(x | 0, i);
  }
  return out;
}

/**
 * A 96 MiB ext4 image with ~56 MiB in 40 files of mixed sizes, as one tar(ZFile lz4)
 * LSMT layer, and its device config.
 */
async function buildImage(): Promise<void> {
  const tree = join(dir, 'tree');
  mkdirSync(join(tree, 'sub', 'deep'), { recursive: true });
  for (let i = 0; i < 40; i++) {
    const size = i % 8 === 0 ? (5 << 20) + i * 1000 : i % 3 === 0 ? (1 << 20) + i * 777 : 4096 * (i + 1) + i;
    const rel = i % 5 === 0 ? `sub/deep/f${i}.bin` : i % 2 === 0 ? `sub/f${i}.bin` : `f${i}.bin`;
    // Half random, half compressible text, so ZFile blocks differ in size.
    const data = i % 2 === 0 ? bytes(size, i + 1) : Buffer.from(`line ${i} `.repeat(Math.ceil(size / 8)).slice(0, size));
    writeFileSync(join(tree, rel), data);
    expected.set(rel, createHash('sha256').update(data).digest('hex'));
  }
  const raw = join(dir, 'fs.img');
  const mk = spawnSync('mkfs.ext4', ['-q', '-F', '-b', '4096', '-O', '^has_journal', '-d', tree, raw, '96M'], { encoding: 'utf8' });
  assert.equal(mk.status, 0, mk.stderr);
  const data = join(dir, 'w.data');
  const index = join(dir, 'w.index');
  const layer = await createWritableLayer({ data, index, virtualSize: 96 << 20 });
  const reader = await openFileReader(raw);
  const chunk = new Uint8Array(4 << 20);
  for (let at = 0; at < reader.size; at += chunk.length) {
    const n = await reader.readAt(chunk, at);
    await layer.write(chunk.subarray(0, n), at);
  }
  await reader.close();
  await layer.flush();
  await layer.close();
  const blob = join(dir, 'layer.commit');
  await commitFile({ data, index }, blob, { zfile: { algorithm: 'lz4', blockSize: 4096, verify: true, rewriteHeader: true }, tar: true });
  for (const f of [raw, data, index]) rmSync(f);
  rmSync(tree, { recursive: true });
  config = join(dir, 'config.json');
  writeFileSync(config, JSON.stringify({ lowers: [{ file: blob }] }));
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), 'obd-crash-'));
  runDir = join(dir, 'run');
  watchdog = startFuseWatchdog(dir, 600);
  await buildImage();
});

after(async () => {
  if (skip) return;
  watchdog?.stop();
  // Last resort after a failure: stop sessions, then anything of ours still running or mounted.
  for (const s of await listSessions(runDir)) {
    pids.add(s.pid);
    try {
      process.kill(s.pid, 'SIGTERM');
    } catch {
      // gone
    }
  }
  for (let i = 0; i < 100 && [...pids].some(alive); i++) await sleep(100);
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n').reverse()) {
    const mp = line.split(' ')[1];
    if (mp !== undefined && mp.startsWith(dir)) spawnSync('umount', ['-l', mp]);
  }
  for (const line of spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout.split('\n')) {
    if (line.includes(runDir)) spawnSync('losetup', ['-d', line.split(':')[0] as string]);
  }
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

/** Kills the serving process `kills` times, each 0.6-1.2 s after it started serving; returns the recovery times (ms). */
async function killServers(mnt: string, kills: number, still: () => boolean): Promise<number[]> {
  const recoveries: number[] = [];
  let pid = (await session(mnt)).serverPid as number;
  let seed = 12345;
  for (let k = 0; k < kills; k++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    await sleep(600 + (seed % 600));
    assert.ok(still(), `the workload ended before kill ${k + 1}`);
    process.kill(pid, 'SIGKILL');
    const killed = Date.now();
    pid = await nextServer(mnt, pid, 30_000);
    recoveries.push(Date.now() - killed);
  }
  return recoveries;
}

function summary(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  return `median ${s[Math.floor(s.length / 2)]} ms, max ${s.at(-1)} ms`;
}

test(`reads of every file survive ${KILLS} kill -9 of the serving process`, { timeout: 300_000, skip }, async () => {
  const mnt = join(dir, 'ro');
  mkdirSync(mnt);
  const out = join(dir, 'rounds');
  mkdirSync(out);
  await obd('mount', config, mnt, '--run-dir', runDir);
  const stop = join(dir, 'stop-reading');
  try {
    const first = await session(mnt);
    assert.notEqual(first.serverPid, first.pid, 'a child serves the device');
    // Each round: drop the page cache, hash every file; stop on the first failure.
    const script = `i=0; while [ ! -e ${stop} ] && [ $i -lt 1000 ]; do echo 3 > /proc/sys/vm/drop_caches; find ${mnt} -type f ! -path '*/lost+found/*' -exec sha256sum {} + > ${out}/$i 2>&1 || { echo "round $i failed" >&2; exit 1; }; i=$((i+1)); done`;
    const reader = spawn('sh', ['-c', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    reader.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => reader.on('exit', (code) => resolve(code)));
    let running = true;
    void exited.then(() => (running = false));
    let recoveries: number[];
    try {
      recoveries = await killServers(mnt, KILLS, () => running);
    } finally {
      writeFileSync(stop, '');
      const code = await Promise.race([exited, sleep(120_000, 'timeout' as const, { ref: false })]);
      if (code === 'timeout') reader.kill('SIGKILL');
      assert.equal(code, 0, `the reader failed: ${stderr}`);
    }
    const rounds = readdirSync(out).length;
    assert.ok(rounds >= 3, `only ${rounds} rounds`);
    for (let i = 0; i < rounds; i++) {
      const text = readFileSync(join(out, String(i)), 'utf8').trim();
      const got = new Map(text.split('\n').map((l) => [l.slice(66).slice(mnt.length + 1), l.slice(0, 64)] as [string, string]));
      assert.deepEqual(got, expected, `round ${i}`);
    }
    const s = await session(mnt);
    assert.equal(s.restarts, KILLS);
    process.stderr.write(`# ${rounds} rounds of ${expected.size} files, ${KILLS} kills; back to serving after a kill: ${summary(recoveries)}\n`);
  } finally {
    await obd('umount', mnt, '--run-dir', runDir);
  }
  assertNothingLeft();
});

/** Runs `script` in sh while `during` runs; stops it through the file `stop`; asserts it succeeded. */
async function withWorkload<T>(script: string, stop: string, during: (running: () => boolean) => Promise<T>): Promise<T> {
  const child = spawn('sh', ['-c', script], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let running = true;
  void exited.then(() => (running = false));
  try {
    return await during(() => running);
  } finally {
    writeFileSync(stop, '');
    const code = await Promise.race([exited, sleep(120_000, 'timeout' as const, { ref: false })]);
    if (code === 'timeout') child.kill('SIGKILL');
    assert.equal(code, 0, `the workload failed: ${stderr}`);
  }
}

test('a writable mount keeps every write through kill -9 of the serving process', { timeout: 300_000, skip }, async () => {
  const mnt = join(dir, 'rw');
  const upper = join(dir, 'upper');
  const sources = join(dir, 'sources');
  mkdirSync(mnt);
  mkdirSync(sources);
  const sums: string[] = [];
  for (let i = 0; i < 8; i++) {
    const data = bytes((i + 1) * 100_000 + i, 1000 + i);
    writeFileSync(join(sources, String(i)), data);
    sums.push(createHash('sha256').update(data).digest('hex'));
  }
  await obd('mount', config, mnt, '--rw', '--upper', upper, '--run-dir', runDir);
  const stop = join(dir, 'stop-writing');
  let written = 0;
  try {
    mkdirSync(join(mnt, 'w'));
    // Direct I/O writes go down to the device at once; every 4th file is also copied
    // through the page cache and synced. 24 names, rewritten in turn: name n always gets
    // source n % 8, so the last write of each name decides its content.
    const script = `i=0; while [ ! -e ${stop} ] && [ $i -lt 5000 ]; do n=$((i % 24)); s=${sources}/$((n % 8)); dd if=$s of=${mnt}/w/$n bs=64k oflag=direct status=none || exit 1; if [ $((i % 4)) -eq 0 ]; then cp $s ${mnt}/w/c$n && sync ${mnt}/w/c$n || exit 1; fi; i=$((i+1)); done; echo $i > ${dir}/writes`;
    await withWorkload(script, stop, (running) => killServers(mnt, 8, running));
    writeFileSync('/proc/sys/vm/drop_caches', '3');
    const files = readdirSync(join(mnt, 'w'));
    for (const f of files) {
      const i = Number(f.replace('c', ''));
      assert.equal(createHash('sha256').update(readFileSync(join(mnt, 'w', f))).digest('hex'), sums[i % 8], `w/${f}`);
    }
    written = files.length;
    const writes = Number(readFileSync(join(dir, 'writes'), 'utf8'));
    assert.ok(writes >= 48, `only ${writes} writes`);
    process.stderr.write(`# ${writes} file writes (${written} names) through 8 kills\n`);
    for (const [rel, sum] of [...expected].slice(0, 5)) {
      assert.equal(createHash('sha256').update(readFileSync(join(mnt, rel))).digest('hex'), sum, rel);
    }
  } finally {
    await obd('umount', mnt, '--run-dir', runDir);
  }
  assertNothingLeft();
  // The upper reopens with everything in it, and the file system is consistent.
  const out = await obd('attach', config, '--upper', upper, '--background', '--run-dir', runDir);
  const loop = out.split(' ')[0] as string;
  try {
    const fsck = spawnSync('e2fsck', ['-fn', loop], { encoding: 'utf8' });
    assert.equal(fsck.status, 0, `${fsck.stdout}${fsck.stderr}`);
  } finally {
    await obd('detach', loop, '--run-dir', runDir);
  }
  assertNothingLeft();
  await obd('mount', config, mnt, '--run-dir', runDir, '--upper', upper);
  try {
    const files = readdirSync(join(mnt, 'w'));
    assert.equal(files.length, written);
    for (const f of files) {
      const i = Number(f.replace('c', ''));
      assert.equal(createHash('sha256').update(readFileSync(join(mnt, 'w', f))).digest('hex'), sums[i % 8], `w/${f} after remount`);
    }
  } finally {
    await obd('umount', mnt, '--run-dir', runDir);
  }
  assertNothingLeft();
});
