/**
 * The snapshotter under a real containerd 1.6 (needs root, containerd, ctr, runc and a
 * static busybox — Debian `busybox-static`): our gRPC server on a temporary socket,
 * containerd started with a private config (root, state and sockets in a temporary
 * directory, CRI disabled) that declares it as proxy snapshotter `overlaybd`, then
 * `ctr --snapshotter overlaybd` prepares/commits/lists/removes snapshots, imports an OCI
 * image built here, and runs a container from it.
 *
 * Then the overlaybd path. `ctr` 1.6 has no remote pull (its `pull` fetches everything
 * and unpacks without layer annotations), so the test makes the call containerd's pull
 * unpacker makes (CRI, `ctr rpull`, containerd ≥ 1.7): Prepare through containerd's own
 * snapshots service with the layer's `containerd.io/snapshot/…` annotations and
 * `containerd.io/snapshot.ref` as labels. we commit the remote layer under the target
 * ref and answer AlreadyExists, containerd's metadata layer stats it and records the
 * committed snapshot in its namespace; `ctr run` then gets an overlay over the image
 * device, attached by a fake device mounter that bind-mounts a prepared directory.
 *
 * Teardown (also after failures): containers and tasks of our namespace, the containerd
 * process group, any shim serving our containerd socket, every mount under the
 * temporary directory, our server and the directory itself.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createSnapshotter, type Snapshotter } from '../src/snapshotter/snapshotter.ts';
import { startSnapshotterServer, type SnapshotterServer } from '../src/snapshotter/grpc-service.ts';
import { unmountUnder } from './suites/snapshotter-suite.ts';
import { FakeDeviceMounter } from './fakes/fake-device-mounter.ts';
import { LABELS, REMOTE_LABEL_VALUE } from '../src/snapshotter/labels.ts';
import { createSnapshotterClient } from '../src/snapshotter/grpc-client.ts';
import { AlreadyExistsError } from '../src/io/errors.ts';
import { spawnContainerd, stopContainerd } from './support/containerd-process.ts';

const BUSYBOX = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p) && readFileSync(p).subarray(0, 4).toString('latin1') === '\x7fELF');
const TOOLS = ['/usr/bin/containerd', '/usr/bin/ctr', '/usr/sbin/runc'];

function skipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  const missing = TOOLS.filter((t) => !existsSync(t) && !existsSync(t.replace('/usr/sbin/', '/usr/bin/')));
  if (missing.length > 0) return `needs containerd, ctr and runc (missing ${missing.join(', ')})`;
  if (BUSYBOX === undefined) return 'needs a static busybox (apt-get install busybox-static)';
  return false;
}

const skip = skipReason();
const NS = 'obdtest';
const IMAGE = 'docker.io/library/obd-busybox:test';
const ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64' };

let dir = '';
/** containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says. */
const RUN_DIR = '/run/containerd';
let runDirExisted = true;
let containerd: ChildProcess | undefined;
let snapshotter: Snapshotter | undefined;
let server: SnapshotterServer | undefined;
let mounter: FakeDeviceMounter | undefined;
/** What the fake "image device" shows when mounted. */
let deviceDir = '';

const sha256 = (b: Uint8Array): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

function sh(argv: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

const ctr = (...args: string[]): Promise<string> => sh(['ctr', '-a', join(dir, 'containerd.sock'), '-n', NS, ...args]);

/** A root filesystem with a static busybox and /etc/marker holding `marker`. */
async function busyboxRootfs(at: string, marker: string): Promise<string> {
  await mkdir(join(at, 'bin'), { recursive: true });
  await mkdir(join(at, 'etc'), { recursive: true });
  await copyFile(BUSYBOX as string, join(at, 'bin', 'busybox'));
  await writeFile(join(at, 'etc', 'marker'), marker);
  return at;
}

/**
 * Builds an OCI layout tarball holding one single-layer image named `name`. `layerAnnotations`
 * returns the layer descriptor's annotations from its digest and size.
 */
async function buildImage(o: {
  tag: string;
  name: string;
  marker: string;
  layerAnnotations?: (layer: { digest: string; size: number }) => Record<string, string>;
}): Promise<string> {
  const rootfs = await busyboxRootfs(join(dir, `rootfs-${o.tag}`), o.marker);
  const layerTar = join(dir, `layer-${o.tag}.tar`);
  await sh(['tar', '--owner=0', '--group=0', '--numeric-owner', '-C', rootfs, '-cf', layerTar, 'bin', 'etc']);
  const layout = join(dir, `layout-${o.tag}`);
  const blobs = join(layout, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });
  const put = async (bytes: Uint8Array): Promise<{ digest: string; size: number }> => {
    const digest = sha256(bytes);
    await writeFile(join(blobs, digest.slice('sha256:'.length)), bytes);
    return { digest, size: bytes.length };
  };
  const layer = await put(await readFile(layerTar));
  const platform = { architecture: ARCH[process.arch] ?? process.arch, os: 'linux' };
  const config = await put(
    Buffer.from(JSON.stringify({ ...platform, config: { Cmd: ['/bin/busybox', 'sh'] }, rootfs: { type: 'layers', diff_ids: [layer.digest] } })),
  );
  const manifest = await put(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
        layers: [
          {
            mediaType: 'application/vnd.oci.image.layer.v1.tar',
            ...layer,
            ...(o.layerAnnotations === undefined ? {} : { annotations: o.layerAnnotations(layer) }),
          },
        ],
      }),
    ),
  );
  await writeFile(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  await writeFile(
    join(layout, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          ...manifest,
          platform,
          annotations: { 'io.containerd.image.name': o.name, 'org.opencontainers.image.ref.name': 'test' },
        },
      ],
    }),
  );
  const out = join(dir, `image-${o.tag}.tar`);
  await sh(['tar', '-C', layout, '-cf', out, 'oci-layout', 'index.json', 'blobs']);
  return out;
}

async function waitForContainerd(): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (containerd?.exitCode !== null && containerd?.exitCode !== undefined) {
      throw new Error(`containerd exited with ${containerd.exitCode}: ${await readFile(join(dir, 'containerd.log'), 'utf8').catch(() => '')}`);
    }
    try {
      await sh(['ctr', '-a', join(dir, 'containerd.sock'), 'version'], 5000);
      return;
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** PIDs of processes (shims) whose command line names our containerd socket. */
function shimPids(): number[] {
  const needle = join(dir, 'containerd.sock');
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').includes(needle)) out.push(Number(name));
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
  dir = await mkdtemp('/tmp/obd-ctd-');
  deviceDir = await busyboxRootfs(join(dir, 'device'), 'from-the-overlaybd-device\n');
  mounter = new FakeDeviceMounter({ bindSource: () => deviceDir });
  snapshotter = await createSnapshotter(join(dir, 'sn'), {
    deviceMounter: mounter,
    mirrorRegistry: [{ host: 'registry.obd.test', insecure: true }],
  });
  server = await startSnapshotterServer({ snapshotter, address: join(dir, 'sn.sock') });
  containerd = await spawnContainerd({ dir: dir, socket: join(dir, 'containerd.sock'), snapshotterSocket: server.address });
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
  for (const pid of shimPids()) {
    await tidy(`shim ${pid}`, async () => process.kill(pid, 'SIGKILL'));
  }
  await tidy('device mounts', async () => mounter?.unmountAll());
  await tidy('mounts', () => unmountUnder(dir));
  await tidy('server', async () => server?.close());
  await tidy('snapshotter', async () => snapshotter?.close());
  await tidy('dir', () => rm(dir, { recursive: true, force: true }));
  if (!runDirExisted) {
    // Only empty directories are removed: anything else there is not ours.
    for (const d of [join(RUN_DIR, 's'), join(RUN_DIR, 'fifo'), RUN_DIR]) await rmdir(d).catch(() => undefined);
  }
});

const T = { skip, timeout: 180_000 };

test('containerd lists the overlaybd proxy snapshotter plugin as ok', T, async () => {
  const plugins = await ctr('plugins', 'ls');
  assert.match(plugins, /io\.containerd\.snapshotter\.v1\s+overlaybd\s+-\s+ok/);
});

test('ctr snapshots prepare, commit, ls, info and rm go through our snapshotter', T, async () => {
  const sn = ['snapshots', '--snapshotter', 'overlaybd'];
  const mounts = JSON.parse(await ctr(...sn, 'prepare', '--mounts', 'k1')) as { Type: string; Source: string; Options: string[] }[];
  assert.equal(mounts.length, 1);
  assert.equal(mounts[0]?.Type, 'bind');
  assert.match(mounts[0]?.Source ?? '', /\/sn\/snapshots\/\d+\/fs$/);
  assert.deepEqual(mounts[0]?.Options, ['rw', 'rbind']);
  await ctr(...sn, 'commit', 'c1', 'k1');
  await ctr(...sn, 'prepare', 'k2', 'c1');
  const ls = await ctr(...sn, 'ls');
  assert.match(ls, /^c1\s+Committed/m);
  assert.match(ls, /^k2\s+c1\s+Active/m);
  const info = JSON.parse(await ctr(...sn, 'info', 'k2')) as { Kind: string; Parent: string };
  assert.equal(info.Parent, 'c1');
  assert.equal(info.Kind, 'Active');
  // Our store sees containerd's namespaced backend keys.
  const backend: string[] = [];
  await snapshotter!.walk((i) => {
    backend.push(`${i.kind} ${i.name}`);
  });
  assert.ok(backend.some((b) => /^active obdtest\/\d+\/k2$/.test(b)), backend.join(', '));
  await assert.rejects(ctr(...sn, 'rm', 'c1'), /FailedPrecondition|failed precondition|child|parent/i);
  await ctr(...sn, 'rm', 'k2');
  await ctr(...sn, 'rm', 'c1');
  assert.doesNotMatch(await ctr(...sn, 'ls'), /c1|k1|k2/);
  // containerd removes the backend snapshots in its garbage collection, which runs later
  // on its own; a lease removed with --sync runs one now.
  await ctr('leases', 'create', '--id', 'obd-test-gc');
  await ctr('leases', 'rm', '--sync', 'obd-test-gc');
  const left: string[] = [];
  await snapshotter!.walk((i) => {
    left.push(i.name);
  });
  assert.deepEqual(left, [], 'containerd removed them through our Remove');
});

test('an OCI image imports into the overlaybd snapshotter and a container runs from it', T, async () => {
  const tarball = await buildImage({ tag: 'plain', name: IMAGE, marker: 'plain\n' });
  await ctr('images', 'import', '--snapshotter', 'overlaybd', tarball);
  assert.match(await ctr('images', 'ls', '-q'), new RegExp(IMAGE.replace(/[.]/g, '\\.')));
  const committed: string[] = [];
  await snapshotter!.walk((i) => {
    committed.push(i.name);
  }, ['kind==committed']);
  assert.equal(committed.length, 1, `one unpacked layer: ${committed.join(', ')}`);
  const out = await ctr(
    'run',
    '--rm',
    '--snapshotter',
    'overlaybd',
    '--runc-root',
    join(dir, 'runc'),
    '--fifo-dir',
    join(dir, 'fifo'),
    IMAGE,
    'obd-hello',
    '/bin/busybox',
    'sh',
    '-c',
    'echo hello; cat /etc/marker',
  );
  assert.equal(out, 'hello\nplain\n');
  assert.deepEqual(mounter!.calls, [], 'a plain image needs no device');
  await ctr('images', 'rm', '--sync', IMAGE);
  // containerd's garbage collector removed the layer through our Remove.
  const left: string[] = [];
  await snapshotter!.walk((i) => {
    left.push(i.name);
  });
  assert.deepEqual(left, []);
  assert.deepEqual(readdirSync(join(dir, 'sn', 'snapshots')), [], 'and its directory');
});

test('an overlaybd layer prepared through containerd becomes a remote snapshot; a container runs over the image device', T, async () => {
  const ref = 'registry.obd.test/obd/remote:1';
  let layer = { digest: '', size: 0 };
  const annotations = (l: { digest: string; size: number }): Record<string, string> => {
    layer = l;
    return { [LABELS.blobDigest]: l.digest, [LABELS.blobSize]: String(l.size), [LABELS.imageRef]: ref };
  };
  await ctr('images', 'import', '--no-unpack', await buildImage({ tag: 'remote', name: ref, marker: 'from-the-layer-blob\n', layerAnnotations: annotations }));
  // One uncompressed layer: its chain ID is its diff ID is its digest.
  const chainID = layer.digest;
  // Under a lease, as containerd's pull unpacker does: else containerd's garbage collector may
  // delete the committed remote snapshot (nothing references it yet) before `ctr run` uses it.
  const lease = 'obd-test-remote';
  await ctr('leases', 'create', '--id', lease);
  const viaContainerd = createSnapshotterClient(join(dir, 'containerd.sock'), {
    name: 'overlaybd',
    metadata: { 'containerd-namespace': NS, 'containerd-lease': lease },
  });
  try {
    await assert.rejects(
      viaContainerd.prepare(`extract-1 ${chainID}`, '', { labels: { ...annotations(layer), [LABELS.targetRef]: chainID } }),
      AlreadyExistsError,
    );
    const info = await viaContainerd.stat(chainID);
    assert.equal(info.kind, 'committed');
  } finally {
    await viaContainerd.close();
  }
  const backend: { name: string; kind: string; labels: Record<string, string> }[] = [];
  await snapshotter!.walk((i) => {
    backend.push(i);
  });
  assert.equal(backend.length, 1, backend.map((i) => i.name).join(', '));
  const top = backend[0]!;
  assert.equal(top.kind, 'committed');
  assert.equal(top.name, chainID, 'containerd 1.6 passes the chain ID as target: remote layers are shared across namespaces');
  assert.equal(top.labels[LABELS.remote], REMOTE_LABEL_VALUE);
  const id = readdirSync(join(dir, 'sn', 'snapshots'))[0] as string;
  const configPath = join(dir, 'sn', 'snapshots', id, 'block', 'config.v1.json');
  assert.equal(
    await readFile(configPath, 'utf8'),
    JSON.stringify({
      repoBlobUrl: 'http://registry.obd.test/v2/obd/remote/blobs',
      lowers: [{ digest: layer.digest, size: layer.size, dir: join(dir, 'sn', 'snapshots', id, 'fs') }],
      upper: {},
      resultFile: join(dir, 'sn', 'snapshots', id, 'block', 'init-debug.log'),
    }),
  );

  const out = await ctr(
    'run',
    '--rm',
    '--snapshotter',
    'overlaybd',
    '--runc-root',
    join(dir, 'runc'),
    '--fifo-dir',
    join(dir, 'fifo'),
    ref,
    'obd-remote',
    '/bin/busybox',
    'sh',
    '-c',
    'cat /etc/marker; echo written > /etc/new',
  );
  assert.equal(out, 'from-the-overlaybd-device\n', 'the rootfs came from the device mount, not from the layer blob');
  assert.deepEqual(mounter!.callsOf('mount').map((c) => [c.configPath, c.options.writable, c.options.fstype]), [[configPath, false, 'ext4']]);
  assert.equal(readdirSync(join(deviceDir, 'etc')).includes('new'), false, 'container writes stay in its upper dir');
  await ctr('leases', 'delete', lease);
  await ctr('images', 'rm', '--sync', ref);
  assert.deepEqual(mounter!.mounted, [], 'removing the image detached its device');
  const left: string[] = [];
  await snapshotter!.walk((i) => {
    left.push(i.name);
  });
  assert.deepEqual(left, []);
});
