/**
 * Issue 4 acceptance through FUSE + loop, with real kernel mounts (root):
 * - the hello-world overlaybd image, pushed to a local registry, mounted lazily:
 *   /hello is byte-identical to the original and runs under chroot;
 * - a writable layer: mount rw, write files, umount, commit the upper, mount the new
 *   stack: the files are there and e2fsck is clean;
 * - bad configs, missing blobs and corrupt layers fail with a clear error and leave
 *   nothing attached or mounted.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { gunzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';
import { startRegistry, type TestRegistry } from './support/registry.ts';
import { FIXTURES, sha256, vector } from './support/shared.ts';
import { assertFsckClean, HELLO_WORLD_FSCK_QUIRK } from './support/fsck.ts';
import { listSessions } from '../src/attach/session.ts';
import { sessionDeviceMounter } from '../src/cli/session-mounter.ts';

const LAYOUT = `oci:${join(FIXTURES, 'hello-world-converted')}:amd64-converted`;
const ORIGINAL_LAYER = join(FIXTURES, 'hello-world-oci', 'blobs', 'sha256', '719385e32844401d57ecfd3eacab360bf551a1491c05b85806ed8f1b08d792f6');

let dir = '';
let runDir = '';
let reg: TestRegistry;

async function obd(...args: string[]): Promise<string> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
  return io.stdout;
}

async function obdFails(args: string[]): Promise<{ code: number; stderr: string }> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.notEqual(code, 0, `obd ${args.join(' ')} should fail`);
  return { code, stderr: io.stderr };
}

function mounts(): string {
  return readFileSync('/proc/mounts', 'utf8');
}

function originalHello(): Buffer {
  const tar = gunzipSync(readFileSync(ORIGINAL_LAYER));
  for (let at = 0; at + 512 <= tar.length; ) {
    const name = tar.subarray(at, at + 100).toString().replace(/\0.*$/s, '');
    const size = parseInt(tar.subarray(at + 124, at + 136).toString().replace(/\0.*$/s, '').trim(), 8);
    if (name === 'hello') return tar.subarray(at + 512, at + 512 + size);
    at += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error('no /hello in the original layer');
}

/** Processes started from this one's obd (pid, parent, argv), found through /proc. */
/** The pids of `list` whose parent chain within `list` leads to `root`. */
function descendants(list: Array<{ pid: number; ppid: number }>, root: number): Set<number> {
  const out = new Set<number>();
  for (let grew = true; grew; ) {
    grew = false;
    for (const p of list) {
      if (!out.has(p.pid) && (p.ppid === root || out.has(p.ppid))) {
        out.add(p.pid);
        grew = true;
      }
    }
  }
  return out;
}

function processes(): Array<{ pid: number; ppid: number; args: string[] }> {
  const out: Array<{ pid: number; ppid: number; args: string[] }> = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const args = readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0');
      if (!args.some((a) => a.endsWith('obd.ts') || a.endsWith('obd.js'))) continue;
      const ppid = Number(/^PPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${name}/status`, 'latin1'))?.[1]);
      out.push({ pid: Number(name), ppid, args });
    } catch {
      // gone
    }
  }
  return out;
}

function assertNothingLeft(): void {
  assert.ok(!mounts().includes(dir), `mounts left under ${dir}:\n${mounts()}`);
  assert.ok(!mounts().includes(runDir), `FUSE mounts left under ${runDir}`);
  const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout;
  assert.ok(!loops.includes(runDir), `loop devices left: ${loops}`);
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-mount-'));
  runDir = join(dir, 'run');
  reg = await startRegistry({ auth: 'none' });
  await obd('push', LAYOUT, `${reg.host}/obd/hello:v1`, '--plain-http', reg.host);
});

after(async () => {
  // last-resort cleanup of anything a failed test left behind
  for (const s of await listSessions(runDir)) {
    try {
      process.kill(s.pid, 'SIGTERM');
    } catch {
      // gone
    }
  }
  await new Promise((r) => setTimeout(r, 500));
  for (const line of mounts().split('\n').reverse()) {
    const mp = line.split(' ')[1];
    if (mp !== undefined && mp.startsWith(dir)) spawnSync('umount', ['-l', mp]);
  }
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('FUSE + loop', () => {
  test('the hello-world image from the registry mounts lazily; /hello is the original and runs', { timeout: 120_000 }, async () => {
    const mnt = join(dir, 'hello');
    mkdirSync(mnt);
    const out = await obd('mount', `${reg.host}/obd/hello:v1`, mnt, '--plain-http', reg.host, '--run-dir', runDir);
    assert.match(out, /\/dev\/loop\d+ mounted on/);
    try {
      assert.equal(sha256(readFileSync(join(mnt, 'hello'))), sha256(originalHello()));
      const run = spawnSync('chroot', [mnt, '/hello'], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(run.status, 0, run.stderr);
      assert.match(run.stdout, /Hello from Docker!/);
    } finally {
      await obd('umount', mnt, '--run-dir', runDir);
    }
    assertNothingLeft();
  });

  test('the same through the NBD server + nbdfuse + loop', { timeout: 120_000 }, async () => {
    const mnt = join(dir, 'hello-nbd');
    mkdirSync(mnt);
    await obd('mount', `${reg.host}/obd/hello:v1`, mnt, '--frontend', 'nbd', '--plain-http', reg.host, '--run-dir', runDir);
    try {
      assert.equal(sha256(readFileSync(join(mnt, 'hello'))), sha256(originalHello()));
      const run = spawnSync('chroot', [mnt, '/hello'], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(run.status, 0, run.stderr);
      assert.match(run.stdout, /Hello from Docker!/);
    } finally {
      await obd('umount', mnt, '--run-dir', runDir);
    }
    assertNothingLeft();
  });

  test('a writable layer: write, umount, commit, mount the new stack', { timeout: 180_000 }, async () => {
    const mnt = join(dir, 'rw');
    const upper = join(dir, 'upper');
    mkdirSync(mnt);
    await obd('mount', LAYOUT, mnt, '--rw', '--upper', upper, '--run-dir', runDir);
    const payload = Buffer.alloc(3 << 20);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + (i >> 12)) & 0xff;
    try {
      mkdirSync(join(mnt, 'data'));
      writeFileSync(join(mnt, 'data', 'big.bin'), payload);
      writeFileSync(join(mnt, 'note.txt'), 'written through overlaybd-ts\n');
      rmSync(join(mnt, 'hello'));
    } finally {
      await obd('umount', mnt, '--run-dir', runDir);
    }
    assertNothingLeft();
    const layer = join(dir, 'layer2.commit');
    await obd('commit', join(upper, 'writable_data'), join(upper, 'writable_index'), layer, '-z', '-t');
    const helloBlob = join(FIXTURES, 'hello-world-converted', 'blobs', 'sha256', '022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d');
    const cfg = join(dir, 'stack.json');
    writeFileSync(cfg, JSON.stringify({ lowers: [{ file: helloBlob }, { file: layer }] }));
    const raw = join(dir, 'stack.raw');
    await obd('export', cfg, raw);
    assertFsckClean(raw, HELLO_WORLD_FSCK_QUIRK);
    rmSync(raw);
    await obd('mount', cfg, mnt, '--run-dir', runDir);
    try {
      assert.equal(sha256(readFileSync(join(mnt, 'data', 'big.bin'))), sha256(payload));
      assert.equal(readFileSync(join(mnt, 'note.txt'), 'utf8'), 'written through overlaybd-ts\n');
      assert.ok(!existsSync(join(mnt, 'hello')));
    } finally {
      await obd('umount', mnt, '--run-dir', runDir);
    }
    assertNothingLeft();
  });

  test('an EROFS image asked for as ext4 mounts as erofs (upstream mounts by the magic)', { timeout: 120_000 }, async () => {
    const src = join(dir, 'erofs-src');
    mkdirSync(src);
    writeFileSync(join(src, 'hello.txt'), 'read from erofs\n');
    const img = join(dir, 'erofs.img');
    const made = spawnSync('mkfs.erofs', [img, src], { encoding: 'utf8' });
    assert.equal(made.status, 0, made.stderr);
    // Pad to 512 bytes and write it into a one-layer overlaybd image.
    const bytes = readFileSync(img);
    writeFileSync(img, Buffer.concat([bytes, Buffer.alloc((512 - (bytes.length % 512)) % 512)]));
    const data = join(dir, 'erofs.data');
    const index = join(dir, 'erofs.index');
    await obd('create', data, index, '1');
    await obd('write', data, index, '0', img);
    const layer = join(dir, 'erofs.commit');
    await obd('commit', data, index, layer);
    const config = join(dir, 'erofs.json');
    writeFileSync(config, JSON.stringify({ lowers: [{ file: layer }] }));
    const mnt = join(dir, 'erofs-mnt');
    mkdirSync(mnt);
    await obd('mount', config, mnt, '--fstype', 'ext4', '--run-dir', runDir);
    try {
      const line = mounts().split('\n').find((l) => l.split(' ')[1] === mnt);
      assert.equal(line?.split(' ')[2], 'erofs', `mounted as: ${line}`);
      assert.equal(readFileSync(join(mnt, 'hello.txt'), 'utf8'), 'read from erofs\n');
    } finally {
      await obd('umount', mnt, '--run-dir', runDir);
    }
    assertNothingLeft();
  });

  test('the snapshotter mounter attaches through a standby process whose serving child was started before the request', { timeout: 120_000 }, async () => {
    const mounter = sessionDeviceMounter({ runDir });
    let ours = new Set<number>();
    const mnt = join(dir, 'standby');
    mkdirSync(mnt);
    try {
      // The standby `obd attach` and the `obd serve-fuse` child it starts ahead.
      let waiting: number[] = [];
      for (let i = 0; i < 300 && waiting.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
        const now = processes();
        const mine = descendants(now, process.pid); // other test files may run their own
        waiting = now.filter((p) => mine.has(p.pid) && p.args.includes('serve-fuse') && now.some((q) => q.pid === p.ppid && q.args.includes('--standby'))).map((p) => p.pid);
      }
      assert.equal(waiting.length, 1, 'one serving child waits beside the standby attach');
      await mounter.mount(LAYOUT, mnt, { writable: false, fstype: 'ext4', mountOptions: [], mkfs: false, mkfsOptions: [] });
      const session = (await listSessions(runDir)).find((r) => r.mountpoint === mnt);
      assert.equal(session?.serverPid, waiting[0], 'the waiting child serves the device');
      assert.equal(sha256(readFileSync(join(mnt, 'hello'))), sha256(originalHello()));
    } finally {
      // This test's obd processes (other test files may run theirs meanwhile): the
      // standby attach and the attach it became, and their serving children.
      ours = descendants(processes(), process.pid);
      await mounter.unmount(mnt);
      await mounter.close?.();
    }
    assertNothingLeft();
    const alive = (): string[] => {
      const now = processes();
      for (const pid of [...ours]) for (const d of descendants(now, pid)) ours.add(d); // started since
      return now.filter((p) => ours.has(p.pid)).map((p) => p.args.join(' '));
    };
    for (let i = 0; i < 100 && alive().length > 0; i++) await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(alive(), [], 'no standby or serving process left');
  });

  test('bad configs, missing blobs and corrupt layers fail clearly and leave nothing behind', { timeout: 120_000 }, async () => {
    const mnt = join(dir, 'bad');
    mkdirSync(mnt, { recursive: true });
    const cases: Array<[string, unknown, RegExp]> = [
      ['not-json.json', 'not json', /invalid JSON/],
      ['wrong-type.json', { lowers: [{ file: 42 }] }, /lowers\[0\]\.file must be a string/],
      ['missing-file.json', { lowers: [{ file: join(dir, 'nope.commit') }] }, /no local file .*nope\.commit.* and no digest/],
      ['missing-blob.json', { repoBlobUrl: `http://${reg.host}/v2/obd/hello/blobs`, lowers: [{ digest: `sha256:${'0'.repeat(64)}`, size: 642560 }] }, /layer 0|not found|404|unknown/i],
    ];
    const corrupt = join(dir, 'corrupt.commit');
    const good = readFileSync(vector('lsmt', 'L1.lz4.commit'));
    good[5000] = (good[5000] as number) ^ 0xff;
    writeFileSync(corrupt, good.subarray(0, 12000));
    cases.push(['corrupt.json', { lowers: [{ file: corrupt }] }, /Cannot/]);
    for (const [name, content, expected] of cases) {
      const cfg = join(dir, name);
      writeFileSync(cfg, typeof content === 'string' ? content : JSON.stringify(content));
      const r = await obdFails(['mount', cfg, mnt, '--plain-http', reg.host, '--run-dir', runDir]);
      assert.match(r.stderr, expected, name);
      assertNothingLeft();
    }
  });
});
