/**
 * Issue 6 acceptance: `obd rpull` + `ctr run` with a real containerd 1.6, runc and our
 * snapshotter (needs root, containerd, ctr, runc, docker-registry, FUSE and loop devices).
 *
 * Setup: Debian's docker-registry (no auth) gets the upstream converted hello-world image
 * (`obd push`); a FaultProxy without faults sits in front of it and its host is used in
 * the image reference, so every blob byte — rpull's and the devices' — is counted. Our
 * snapshotter daemon runs in-process (`runSnapshotterDaemon`) with the real
 * `sessionDeviceMounter` (`obd attach` processes: FUSE + loop + mount), and containerd
 * runs with a private config declaring it as proxy snapshotter `overlaybd`.
 *
 * Teardown (also after failures): tasks and containers of our namespace, the containerd
 * process group and shims serving our socket, the daemon, every `obd attach` session
 * recorded under the temporary run dir, mounts and loop devices under the temporary
 * directory, the proxy, the registry and the directory itself.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';
import { rpullHere } from '../src/cli/commands/rpull.ts';
import { runSnapshotterDaemon } from '../src/snapshotter/daemon.ts';
import { sessionDeviceMounter } from '../src/cli/session-mounter.ts';
import { listSessions } from '../src/attach/session.ts';
import { startRegistry, type TestRegistry } from './support/registry.ts';
import { FaultProxy } from './fakes/fault-proxy.ts';
import { FIXTURES } from './support/shared.ts';
import { alive, spawnContainerd, stopContainerd, stopSessions } from './support/containerd-process.ts';
import { OciLayout } from '../src/image/oci-layout.ts';
import { addAccelerationLayer } from '../src/convert/acceleration-layer.ts';
import { encodeTrace } from '../src/device/trace-file.ts';
import { isMountPoint } from '../src/attach/filesystem.ts';

const LAYOUT = `oci:${join(FIXTURES, 'hello-world-converted')}:amd64-converted`;
const LAYER_DIGEST = 'sha256:022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d';
const LAYER_BYTES = 642560;
const NS = 'obdrpull';
const TOOLS = ['containerd', 'ctr', 'runc', 'docker-registry', 'losetup'];

function which(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { timeout: 5000 }).status === 0;
}

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  const missing = TOOLS.filter((t) => !which(t));
  if (missing.length > 0) return `needs ${missing.join(', ')} (apt-get install containerd runc docker-registry)`;
  if (!existsSync('/dev/fuse')) return 'needs /dev/fuse';
  if (process.arch !== 'x64') return 'the fixture image is linux/amd64';
  return false;
}

const skip = skipReason();
/** containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says. */
const RUN_DIR = '/run/containerd';
let runDirExisted = true;
let dir = '';
let runDir = '';
let reg: TestRegistry | undefined;
let proxy: FaultProxy | undefined;
let containerd: ChildProcess | undefined;
let daemonStop: AbortController | undefined;
let daemonDone: Promise<void> | undefined;
let ref = '';
let proxyHost = '';

function sh(argv: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

const sock = (): string => join(dir, 'containerd.sock');
const ctr = (...args: string[]): Promise<string> => sh(['ctr', '-a', sock(), '-n', NS, ...args]);
const ctrRun = (...args: string[]): Promise<string> =>
  ctr('run', '--rm', '--snapshotter', 'overlaybd', '--runc-root', join(dir, 'runc'), '--fifo-dir', join(dir, 'fifo'), ...args);

/** `ctr run` without `--rm`: the container and its snapshot stay for inspection. */
const ctrRunKept = (...args: string[]): Promise<string> =>
  ctr('run', '--snapshotter', 'overlaybd', '--runc-root', join(dir, 'runc'), '--fifo-dir', join(dir, 'fifo'), ...args);
/** `ctr snapshots mounts` of a container's snapshot (its key is the container ID). */
const snapshotMounts = (container: string): Promise<string> => ctr('snapshots', '--snapshotter', 'overlaybd', 'mounts', '/target', container);

/** Runs containerd's garbage collector now: deleting a lease with `--sync` collects synchronously. */
async function collectGarbage(): Promise<void> {
  const id = `obd-gc-${Date.now()}`;
  await ctr('leases', 'create', '--id', id);
  await ctr('leases', 'rm', '--sync', id);
}

async function obd(...args: string[]): Promise<string> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
  return io.stdout;
}

async function waitForContainerd(): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (containerd?.exitCode !== null && containerd?.exitCode !== undefined) {
      throw new Error(`containerd exited with ${containerd.exitCode}: ${await readFile(join(dir, 'containerd.log'), 'utf8').catch(() => '')}`);
    }
    try {
      await sh(['ctr', '-a', sock(), 'version'], 5000);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** PIDs of this process's standby `obd attach --standby` children. */
function standbyPids(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const args = readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0');
      const ppid = /^PPid:\s+(\d+)$/m.exec(readFileSync(`/proc/${name}/status`, 'latin1'))?.[1];
      if (args.includes('attach') && args.includes('--standby') && Number(ppid) === process.pid) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

/** PIDs of processes (shims) whose command line names our containerd socket. */
function shimPids(): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').includes(sock())) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out.filter((p) => p !== containerd?.pid);
}

before(async () => {
  if (skip !== false) return;
  runDirExisted = existsSync(RUN_DIR);
  // Short path: unix socket paths are limited to 108 bytes.
  dir = await mkdtemp('/tmp/obd-rp-');
  runDir = join(dir, 'run');
  reg = await startRegistry({ auth: 'none' });
  await obd('push', LAYOUT, `${reg.host}/obd/hello-world:rpull`, '--plain-http', reg.host);
  proxy = await FaultProxy.start({ upstream: reg.url });
  proxyHost = new URL(proxy.url).host;
  ref = `${proxyHost}/obd/hello-world:rpull`;

  const snConfig = join(dir, 'snapshotter.json');
  await writeFile(
    snConfig,
    JSON.stringify({ root: join(dir, 'sn'), address: join(dir, 'sn.sock'), rwMode: 'overlayfs', mirrorRegistry: [{ host: proxyHost, insecure: true }] }),
  );
  daemonStop = new AbortController();
  let ready: () => void = () => undefined;
  const isReady = new Promise<void>((r) => {
    ready = r;
  });
  daemonDone = runSnapshotterDaemon(snConfig, {
    deviceMounter: sessionDeviceMounter({ runDir }),
    // As `obd snapshotter` serves `obd rpull` (src/cli/commands/snapshotter.ts).
    pullHandler: async (argv) => {
      const io = memoryIo();
      await rpullHere(argv, io);
      return io.stdout;
    },
    signal: daemonStop.signal,
    handleSignals: false,
    onReady: () => ready(),
  });
  await Promise.race([isReady, daemonDone.then(() => assert.fail('the snapshotter daemon stopped before it was ready'))]);

  containerd = await spawnContainerd({ dir: dir, socket: sock(), snapshotterSocket: join(dir, 'sn.sock') });
  await waitForContainerd();
});

after(async () => {
  if (skip !== false || dir === '') return;
  const tidy = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      console.error(`cleanup (${what}): ${(e as Error).message}`);
    }
  };
  if (containerd !== undefined) await stopContainerd(containerd, ctr, (what, e) => console.error(`cleanup (${what}): ${e.message}`));
  for (const pid of shimPids()) await tidy(`shim ${pid}`, async () => process.kill(pid, 'SIGKILL'));
  await tidy('daemon', async () => {
    daemonStop?.abort();
    await daemonDone;
  });
  // Sessions: SIGTERM lets each tear down its mount, loop device and FUSE connection.
  let pids: number[] = [];
  await tidy('sessions', async () => {
    pids = await stopSessions(runDir);
  });
  await tidy('mounts', async () => {
    for (const line of readFileSync('/proc/mounts', 'utf8').split('\n').reverse()) {
      const mp = line.split(' ')[1];
      if (mp !== undefined && mp.startsWith(dir)) spawnSync('umount', ['-l', mp], { timeout: 10_000 });
    }
  });
  await tidy('loops', async () => {
    for (const line of spawnSync('losetup', ['-a'], { encoding: 'utf8', timeout: 10_000 }).stdout.split('\n')) {
      if (line.includes(dir)) spawnSync('losetup', ['-d', line.split(':')[0] as string], { timeout: 10_000 });
    }
  });
  for (const pid of pids) {
    await tidy(`session ${pid}`, async () => {
      if (alive(pid)) process.kill(pid, 'SIGKILL');
    });
  }
  // The mounter's standby attach process ends with the daemon (its close()); used ones
  // became the sessions stopped above (their command line says --standby too).
  let standbys = standbyPids();
  for (let i = 0; i < 50 && standbys.length > 0; i++) {
    await new Promise((r) => setTimeout(r, 100));
    standbys = standbyPids();
  }
  for (const pid of standbys) await tidy(`standby ${pid}`, async () => process.kill(pid, 'SIGKILL'));
  await tidy('proxy', async () => proxy?.close());
  await tidy('registry', async () => reg?.stop());
  await tidy('dir', () => rm(dir, { recursive: true, force: true }));
  if (!runDirExisted) {
    for (const d of [join(RUN_DIR, 's'), join(RUN_DIR, 'fifo'), RUN_DIR]) await rmdir(d).catch(() => undefined);
  }
  assert.deepEqual(standbys, [], 'a standby attach process outlived the daemon');
});

const T = { skip, timeout: 240_000 };

test('obd rpull records the image in containerd and fetches no layer data', T, async () => {
  proxy!.resetCounters();
  const out = await obd('rpull', ref, '--address', sock(), '--namespace', NS, '--plain-http', proxyHost);
  const fetched = proxy!.counters.bytesSent;
  console.log(`# rpull: ${fetched} bytes through the proxy (${proxy!.counters.requests} requests, ${proxy!.counters.blobGets} blob GETs), layer ${LAYER_BYTES} bytes`);
  assert.ok(fetched < LAYER_BYTES * 0.05, `rpull fetched ${fetched} bytes`);
  assert.match(out, new RegExp(`layer 0 ${LAYER_DIGEST} \\(${LAYER_BYTES} bytes\\): remote snapshot ${LAYER_DIGEST}`));
  assert.match(out, /image created/);
  assert.match(await ctr('images', 'ls', '-q'), new RegExp(ref.replace(/[.]/g, '\\.')));
  // The layer is a committed snapshot of the overlaybd snapshotter, named by its chain ID.
  assert.match(await ctr('snapshots', '--snapshotter', 'overlaybd', 'ls'), new RegExp(`^${LAYER_DIGEST}\\s+Committed`, 'm'));
  // The config carries the GC reference to it, as containerd's unpacker sets it.
  const content = await ctr('content', 'ls');
  assert.match(content, new RegExp(`containerd\\.io/gc\\.ref\\.snapshot\\.overlaybd=${LAYER_DIGEST}`));
  assert.match(content, /containerd\.io\/gc\.ref\.content\.config=sha256:b67b1f12/);
  // rpull's lease is gone, and the snapshot survives a garbage collection.
  assert.doesNotMatch(await ctr('leases', 'ls'), /obd-rpull-/);
  await collectGarbage();
  assert.match(await ctr('snapshots', '--snapshotter', 'overlaybd', 'ls'), new RegExp(`^${LAYER_DIGEST}\\s+Committed`, 'm'));
});

test('rpull again, through the daemon\'s pull socket, finds the layer present and updates the image', T, async () => {
  proxy!.resetCounters();
  const socket = join(dir, 'rpull.sock');
  assert.ok(lstatSync(socket).isSocket(), 'the daemon serves rpull.sock beside its gRPC socket');
  assert.equal(lstatSync(socket).mode & 0o777, 0o600);
  const out = await obd('rpull', ref, '--address', sock(), '--namespace', NS, '--plain-http', proxyHost, '--daemon', socket);
  assert.match(out, /already present/);
  assert.match(out, /image updated/);
  assert.ok(proxy!.counters.bytesSent < LAYER_BYTES * 0.05);
});

test('ctr run on the overlaybd snapshotter runs hello-world from the lazily read device', T, async () => {
  proxy!.resetCounters();
  const out = await ctrRun(ref, 'hello');
  console.log(`# ctr run (overlayfs): ${proxy!.counters.bytesSent} blob bytes read on demand (${proxy!.counters.rangeGets} range GETs)`);
  assert.match(out, /Hello from Docker!/);
  assert.ok(proxy!.counters.rangeGets > 0, 'the device read the layer through the proxy');
  const sessions = await listSessions(runDir);
  assert.equal(sessions.length, 1, 'one shared image device');
});

test('ctr run with overlaybd.writable=dir runs on its own writable device, mounted by the snapshotter', T, async () => {
  proxy!.resetCounters();
  const out = await ctrRunKept('--snapshotter-label', 'containerd.io/snapshot/overlaybd.writable=dir', ref, 'hello-dir');
  console.log(`# ctr run (dir): ${proxy!.counters.bytesSent} blob bytes read`);
  assert.match(out, /Hello from Docker!/);
  // What the snapshotter handed out: a bind of the snapshot's own mount point, where its
  // writable device's ext4 is mounted read-write by an obd attach session.
  const source = /^mount -t bind (\S+) \/target -o rw,rbind$/m.exec(await snapshotMounts('hello-dir'))?.[1];
  assert.ok(source !== undefined && /\/sn\/snapshots\/\d+\/block\/mountpoint$/.test(source), `dir mode mounts: ${source}`);
  const host = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')).find((f) => f[1] === source);
  assert.deepEqual([host?.[2], host?.[3]?.split(',')[0]], ['ext4', 'rw'], `host mount at ${source}`);
  const session = (await listSessions(runDir)).find((s) => s.mountpoint === source);
  assert.equal(session?.writable, true);
  assert.ok(existsSync(join(source, '..', 'writable_data')));
  // Removing the container lets containerd's collector remove its snapshot, which detaches its writable device.
  await ctr('containers', 'rm', 'hello-dir');
  await collectGarbage();
  const sessions = await listSessions(runDir);
  assert.equal(sessions.length, 1, `only the shared image device is left: ${sessions.map((s) => s.target).join(', ')}`);
});

test('ctr run with overlaybd.writable=dev hands out the raw writable device', T, async () => {
  const out = await ctrRunKept('--snapshotter-label', 'containerd.io/snapshot/overlaybd.writable=dev', ref, 'hello-dev');
  assert.match(out, /Hello from Docker!/);
  // What the snapshotter handed out: the block device itself, for containerd to mount.
  const dev = /^mount -t ext4 (\/dev\/loop\d+) \/target -o rw,discard$/m.exec(await snapshotMounts('hello-dev'))?.[1];
  assert.ok(dev !== undefined, 'dev mode mounts');
  const session = (await listSessions(runDir)).find((s) => s.blockDevice === dev);
  assert.equal(session?.writable, true, `an obd attach session serves ${dev} read-write`);
  assert.equal(session.mountpoint, undefined, 'the snapshotter did not mount it');
  await ctr('containers', 'rm', 'hello-dev');
  await collectGarbage();
  const sessions = await listSessions(runDir);
  assert.equal(sessions.length, 1, `only the shared image device is left: ${sessions.map((s) => s.target).join(', ')}`);
});

/** Polls `check` every 100 ms until it holds, for at most `ms`. */
async function eventually(what: string, check: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> {
  for (const deadline = Date.now() + ms; !(await check()); ) {
    if (Date.now() > deadline) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('rpull of an accelerated image attaches its device at pull: mounted and replaying before any run, reused by the run, detached on removal', T, async () => {
  const layoutDir = join(dir, 'accel-layout');
  await sh(['cp', '-a', join(FIXTURES, 'hello-world-converted'), layoutDir]);
  // A trace: the first 128 KiB of the (decoded) layer, read as the runs above read it.
  const trace = encodeTrace([{ op: 'R', layerIndex: 0, offset: 0, count: 65536 }, { op: 'R', layerIndex: 0, offset: 65536, count: 65536 }]);
  await addAccelerationLayer({ layout: await OciLayout.open(layoutDir), from: 'amd64-converted', to: 'accel', trace });
  await obd('push', `oci:${layoutDir}:accel`, `${reg!.host}/obd/hello-world:accel`, '--plain-http', reg!.host);
  const accelRef = `${proxyHost}/obd/hello-world:accel`;
  const known = new Set((await listSessions(runDir)).map((s) => s.mountpoint));
  const fresh = async (): Promise<string[]> => (await listSessions(runDir)).map((s) => s.mountpoint ?? '').filter((m) => !known.has(m));

  proxy!.resetCounters();
  await obd('rpull', accelRef, '--address', sock(), '--namespace', NS, '--plain-http', proxyHost);
  // No container yet: the acceleration layer's device is attached and replays the trace.
  await eventually('the acceleration layer device is mounted', async () => {
    const [m] = await fresh();
    return m !== undefined && (await isMountPoint(m));
  });
  const [mountpoint] = await fresh();
  assert.match(mountpoint ?? '', /\/snapshots\/\d+\/block\/mountpoint$/);
  await eventually('the replay read the layer', () => proxy!.counters.rangeGets > 0, 30_000);

  const out = await ctrRun(accelRef, 'hello-accel');
  assert.match(out, /Hello from Docker!/);
  assert.deepEqual(await fresh(), [mountpoint], 'the run reused the device attached at pull');

  await ctr('images', 'rm', '--sync', accelRef);
  await collectGarbage();
  await eventually('the device is detached with its snapshot', async () => (await fresh()).length === 0 && !(await isMountPoint(mountpoint ?? '/')), 30_000);
});

test('rpull of a plain (non-overlaybd) image fails clearly and records nothing', T, async () => {
  const plainRef = `${proxyHost}/obd/hello-world:plain`;
  await obd('push', `oci:${join(FIXTURES, 'hello-world-converted')}:amd64`, plainRef, '--plain-http', proxyHost);
  const io = memoryIo();
  const code = await main(['rpull', plainRef, '--address', sock(), '--namespace', NS, '--plain-http', proxyHost], io);
  assert.notEqual(code, 0);
  assert.match(io.stderr, /layer 0 .* has no containerd\.io\/snapshot\/overlaybd\/blob-digest annotation \(not an overlaybd image/);
  assert.doesNotMatch(await ctr('images', 'ls', '-q'), /:plain/);
  // The lease taken while the registry answered is gone again.
  assert.doesNotMatch(await ctr('leases', 'ls'), /obd-rpull-/);
});
