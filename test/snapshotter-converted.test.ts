/**
 * Issue 6 acceptance with an image our convertor made (needs root, containerd 1.6, ctr,
 * runc, docker-registry, a static busybox — Debian `busybox-static` —, FUSE and loop
 * devices).
 *
 * Setup: a three-layer busybox image is built here (layer 0: busybox, layer 1: a text
 * file, layer 2: another text file and 1 MiB of random data), pushed as is (the plain OCI
 * image) and converted by `obd convert` into Debian's docker-registry. A FaultProxy
 * without faults sits in front of the registry and its host is used in the image
 * references, so every registry byte of rpull, of `ctr images pull` and of the devices is
 * counted. The snapshotter daemon is a separate process (`obd snapshotter --config F`,
 * the CLI) with the real `obd attach` device mounter; containerd runs with a private
 * config declaring it as proxy snapshotter `overlaybd` (test/support/containerd-env.ts,
 * which also holds the teardown).
 *
 * Each rootfs mode is checked on what the snapshotter really mounted: the mounts
 * `ctr snapshots mounts` reports for the container's snapshot, the host mounts and
 * `obd attach` sessions behind them, and the root file system type seen inside.
 *
 * Then the daemon is SIGKILLed under a running container (a bounded busybox loop that
 * writes to its rootfs and reads an image file) and started again on the same root and
 * socket; last, the layers are prepared the way containerd's unpacker does for the CRI
 * plugin (`containerd.io/snapshot/cri.*` labels, no image-ref label). The tests share
 * the containerd state and run in order.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, symlink, writeFile, copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';
import { startRegistry, type TestRegistry } from './support/registry.ts';
import { FaultProxy } from './fakes/fault-proxy.ts';
import { writeTestImage } from './support/oci-image.ts';
import { ContainerdEnv, containerdSkipReason, hostMounts, sh } from './support/containerd-env.ts';
import { createSnapshotterClient } from '../src/snapshotter/grpc-client.ts';
import { LABELS } from '../src/snapshotter/labels.ts';
import { AlreadyExistsError } from '../src/io/errors.ts';
import { OciLayout } from '../src/image/oci-layout.ts';
import { encodeTrace } from '../src/device/trace-file.ts';
import { addAccelerationLayer } from '../src/convert/acceleration-layer.ts';

const BUSYBOX = ['/bin/busybox', '/usr/bin/busybox'].find((p) => existsSync(p) && readFileSync(p).subarray(0, 4).toString('latin1') === '\x7fELF');
const NS = 'obdconv';

function skipReason(): string | false {
  const base = containerdSkipReason(['docker-registry']);
  if (base !== false) return base;
  if (BUSYBOX === undefined) return 'needs a static busybox (apt-get install busybox-static)';
  if (process.arch !== 'x64') return 'the test image is linux/amd64';
  return false;
}

const skip = skipReason();
let env: ContainerdEnv | undefined;
let reg: TestRegistry | undefined;
let proxy: FaultProxy | undefined;
let proxyHost = '';
let ref = '';
let plainRef = '';
/** Sum of the converted image's layer blob sizes. */
let imageBytes = 0;
let layerCount = 0;
const BIG = randomBytes(1 << 20);
const BIG_SHA = createHash('sha256').update(BIG).digest('hex');
/** What the check command prints: files of all three layers. */
const EXPECTED = `layer0\nlayer1\nlayer2\n${BIG_SHA}  /data/big.bin\n`;
const CHECK = 'cat /etc/layer0 /etc/layer1 /etc/layer2 && sha256sum /data/big.bin';

async function obd(...args: string[]): Promise<string> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
  return io.stdout;
}

async function tarOf(root: string, name: string): Promise<Uint8Array> {
  const out = join(env!.dir, `${name}.tar`);
  await sh(['tar', '--owner=0', '--group=0', '--numeric-owner', '--sort=name', '--mtime=2024-01-01', '-C', root, '-cf', out, '.']);
  return readFile(out);
}

/** The three-layer busybox image as an OCI layout; returns its `oci:` reference. */
async function buildImage(): Promise<string> {
  const l0 = join(env!.dir, 'l0');
  await mkdir(join(l0, 'bin'), { recursive: true });
  await mkdir(join(l0, 'etc'), { recursive: true });
  await copyFile(BUSYBOX as string, join(l0, 'bin', 'busybox'));
  for (const tool of ['sh', 'cat', 'sha256sum', 'awk', 'sleep', 'echo']) await symlink('busybox', join(l0, 'bin', tool));
  await writeFile(join(l0, 'etc', 'layer0'), 'layer0\n');
  const l1 = join(env!.dir, 'l1');
  await mkdir(join(l1, 'etc'), { recursive: true });
  await writeFile(join(l1, 'etc', 'layer1'), 'layer1\n');
  const l2 = join(env!.dir, 'l2');
  await mkdir(join(l2, 'etc'), { recursive: true });
  await mkdir(join(l2, 'data'), { recursive: true });
  await writeFile(join(l2, 'etc', 'layer2'), 'layer2\n');
  await writeFile(join(l2, 'data', 'big.bin'), BIG);
  const layers = [];
  for (const [i, root] of [l0, l1, l2].entries()) layers.push({ tar: await tarOf(root, `layer${i}`), compression: 'gzip' as const });
  const image = await writeTestImage(join(env!.dir, 'layout'), { tag: 'v1', layers, config: { Cmd: ['/bin/sh'] } });
  for (const root of [l0, l1, l2]) await rm(root, { recursive: true });
  return image;
}

interface ManifestDoc {
  digest: string;
  config: { digest: string };
  layers: { digest: string; size: number; annotations?: Record<string, string> }[];
}

async function manifestOf(repoTag: string): Promise<ManifestDoc> {
  const [repo, tag] = repoTag.split(':') as [string, string];
  const res = await fetch(`${reg!.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' } });
  assert.equal(res.status, 200);
  const bytes = new Uint8Array(await res.arrayBuffer());
  return { ...(JSON.parse(new TextDecoder().decode(bytes)) as Omit<ManifestDoc, 'digest'>), digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
}

/** Chain IDs of the image's layers, bottom first (from its config's diff IDs). */
async function chainIdsOf(repo: string, configDigest: string): Promise<string[]> {
  const config = (await (await fetch(`${reg!.url}/v2/${repo}/blobs/${configDigest}`)).json()) as { rootfs: { diff_ids: string[] } };
  const out: string[] = [];
  for (const diff of config.rootfs.diff_ids) {
    const prev = out[out.length - 1];
    out.push(prev === undefined ? diff : `sha256:${createHash('sha256').update(`${prev} ${diff}`).digest('hex')}`);
  }
  return out;
}

/** `ctr snapshots mounts` of the container's snapshot (its key is the container ID), one mount command a line. */
async function snapshotMounts(container: string): Promise<string> {
  return env!.ctr('snapshots', '--snapshotter', 'overlaybd', 'mounts', '/target', container);
}

before(async () => {
  if (skip !== false) return;
  env = await ContainerdEnv.create({ prefix: '/tmp/obd-cv-', namespace: NS });
  reg = await startRegistry({ auth: 'none' });
  const image = await buildImage();
  await obd('push', image, `${reg.host}/obd/busybox:plain`, '--plain-http', reg.host);
  await obd('convert', image, `${reg.host}/obd/busybox:obd`, '--plain-http', reg.host, '--work-dir', join(env.dir, 'work'), '--no-db');
  await rm(join(env.dir, 'work'), { recursive: true, force: true });
  const m = await manifestOf('obd/busybox:obd');
  layerCount = m.layers.length;
  imageBytes = m.layers.reduce((n, l) => n + l.size, 0);
  proxy = await FaultProxy.start({ upstream: reg.url });
  proxyHost = new URL(proxy.url).host;
  ref = `${proxyHost}/obd/busybox:obd`;
  plainRef = `${proxyHost}/obd/busybox:plain`;
  await env.writeSnapshotterConfig({ mirrorRegistry: [{ host: proxyHost, insecure: true }] });
  await env.startSnapshotter();
  await env.startContainerd();
});

after(async () => {
  if (env === undefined) return;
  await env.cleanup();
  await proxy?.close().catch(() => undefined);
  await reg?.stop().catch(() => undefined);
});

const T = { skip, timeout: 180_000 };

test('obd rpull of an image made by obd convert fetches < 5% of its bytes', T, async () => {
  assert.ok(layerCount >= 3, `the converted image has ${layerCount} layers`);
  proxy!.resetCounters();
  const out = await obd('rpull', ref, '--address', env!.sock, '--namespace', NS, '--plain-http', proxyHost);
  const fetched = proxy!.counters.bytesSent;
  console.log(`# rpull: ${fetched} bytes through the proxy of ${imageBytes} image layer bytes (${layerCount} layers)`);
  assert.ok(fetched < imageBytes * 0.05, `rpull fetched ${fetched} of ${imageBytes} bytes`);
  assert.equal(out.match(/: remote snapshot sha256:/g)?.length, layerCount, out);
  const ls = await env!.ctr('snapshots', '--snapshotter', 'overlaybd', 'ls');
  assert.equal(ls.match(/\sCommitted/g)?.length, layerCount, ls);
});

test('ctr run over the converted image reads files of every layer from the image device (overlayfs mode)', T, async () => {
  proxy!.resetCounters();
  const out = await env!.ctrRun(ref, 'conv-ovl', 'sh', '-c', `${CHECK} && awk '$2 == "/" { print $3 }' /proc/mounts`);
  console.log(`# ctr run (overlayfs): ${proxy!.counters.bytesSent} blob bytes read on demand of ${imageBytes}`);
  assert.equal(out, `${EXPECTED}overlay\n`);
  assert.ok(proxy!.counters.rangeGets > 0, 'the device read the layers through the proxy');
  // The container's rootfs is an overlay over the shared read-only image device.
  const mounts = await snapshotMounts('conv-ovl');
  const lower = /lowerdir=(\S+?)(,|$|\s)/.exec(mounts)?.[1] ?? '';
  assert.match(mounts, /^mount -t overlay overlay /m);
  assert.match(lower, /\/sn\/snapshots\/\d+\/block\/mountpoint$/, mounts);
  const image = (await env!.sessions()).find((s) => s.mountpoint === lower);
  assert.ok(image !== undefined, 'an obd attach session serves the image device');
  assert.equal(image.writable, false);
  assert.equal(hostMounts().find((m) => m.mountpoint === lower)?.options.split(',')[0], 'ro');
  await env!.ctr('containers', 'rm', 'conv-ovl');
});

test('ctr run with overlaybd.writable=dir runs on its own writable device, mounted by the snapshotter', T, async () => {
  const out = await env!.ctrRun(
    '--snapshotter-label',
    'containerd.io/snapshot/overlaybd.writable=dir',
    ref,
    'conv-dir',
    'sh',
    '-c',
    `${CHECK} && echo dir > /etc/written && cat /etc/written && awk '$2 == "/" { print $3 }' /proc/mounts`,
  );
  assert.equal(out, `${EXPECTED}dir\next4\n`);
  // dir mode: a bind of the snapshot's own mount point, where its writable device's ext4 is mounted read-write.
  const mounts = await snapshotMounts('conv-dir');
  const source = /^mount -t bind (\S+) \/target -o rw,rbind$/m.exec(mounts)?.[1];
  assert.ok(source !== undefined, mounts);
  assert.match(source, /\/sn\/snapshots\/\d+\/block\/mountpoint$/);
  const host = hostMounts().find((m) => m.mountpoint === source);
  assert.equal(host?.fstype, 'ext4', `host mount at ${source}`);
  assert.equal(host.options.split(',')[0], 'rw');
  const session = (await env!.sessions()).find((s) => s.mountpoint === source);
  assert.equal(session?.writable, true, 'an obd attach session serves the writable device');
  assert.ok(existsSync(join(source, '..', 'writable_data')), 'its writable layer is in the snapshot');
  assert.equal(readFileSync(join(source, 'etc', 'written'), 'utf8'), 'dir\n', 'the container wrote to the device');
  await env!.ctr('containers', 'rm', 'conv-dir');
  await env!.collectGarbage();
  assert.equal(
    (await env!.sessions()).some((s) => s.mountpoint === source),
    false,
    'removing the container snapshot detached its writable device',
  );
  assert.equal(hostMounts().some((m) => m.mountpoint === source), false);
});

test('ctr run with overlaybd.writable=dev gets the raw writable device to mount itself', T, async () => {
  const out = await env!.ctrRun(
    '--snapshotter-label',
    'containerd.io/snapshot/overlaybd.writable=dev',
    ref,
    'conv-dev',
    'sh',
    '-c',
    `${CHECK} && echo dev > /etc/written && cat /etc/written && awk '$2 == "/" { print $1, $3 }' /proc/mounts`,
  );
  const dev = /^mount -t ext4 (\/dev\/loop\d+) \/target -o rw,discard$/m.exec(await snapshotMounts('conv-dev'))?.[1];
  assert.ok(dev !== undefined, 'dev mode hands out the block device itself');
  assert.equal(out, `${EXPECTED}dev\n${dev} ext4\n`);
  const session = (await env!.sessions()).find((s) => s.blockDevice === dev);
  assert.ok(session !== undefined, `an obd attach session serves ${dev}`);
  assert.equal(session.writable, true);
  assert.equal(session.mountpoint, undefined, 'the snapshotter did not mount it');
  assert.equal(hostMounts().some((m) => m.source === dev), false, 'nothing on the host mounts it');
  await env!.ctr('containers', 'rm', 'conv-dev');
  await env!.collectGarbage();
  assert.equal((await env!.sessions()).some((s) => s.blockDevice === dev), false, 'removing the container snapshot detached its device');
});

test('a plain OCI image pulled with ctr images pull --snapshotter overlaybd runs', T, async () => {
  proxy!.resetCounters();
  await env!.ctr('images', 'pull', '--plain-http', '--snapshotter', 'overlaybd', plainRef);
  const pulled = proxy!.counters.bytesSent;
  const plain = await manifestOf('obd/busybox:plain');
  assert.ok(pulled >= plain.layers.reduce((n, l) => n + l.size, 0), 'ctr pull downloaded the layers');
  const sessionsBefore = (await env!.sessions()).length;
  const out = await env!.ctrRun('--rm', plainRef, 'plain-run', 'sh', '-c', `${CHECK} && awk '$2 == "/" { print $3 }' /proc/mounts`);
  assert.equal(out, `${EXPECTED}overlay\n`);
  assert.equal((await env!.sessions()).length, sessionsBefore, 'plain layers need no device');
  await env!.ctr('images', 'rm', '--sync', plainRef);
});

test('killing the snapshotter with SIGKILL and starting it again keeps a running container alive; ctr works after the restart', T, async () => {
  const exec = (id: string, cmd: string): Promise<string> => env!.ctr('tasks', 'exec', '--exec-id', id, '--fifo-dir', join(env!.dir, 'fifo'), 'conv-long', 'sh', '-c', cmd);
  // Bounded (at most ~3 min): appends to a file in its rootfs and reads an image layer file, ten times a second.
  const loop = 'i=0; while [ $i -lt 1800 ]; do echo $i >> /count; cat /etc/layer2 > /dev/null || exit 1; i=$((i+1)); sleep 0.1; done';
  await env!.ctrRun('-d', ref, 'conv-long', 'sh', '-c', loop);
  const count = async (): Promise<number> => Number((await exec(`c${Date.now()}`, 'tail -n 1 /count')).trim());
  const waitForCount = async (above: number): Promise<number> => {
    for (let i = 0; i < 100; i++) {
      const n = await count().catch(() => -1);
      if (n > above) return n;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`the container's counter did not pass ${above}`);
  };
  const before = await waitForCount(2);
  const sessions = await env!.sessions();
  assert.equal(sessions.length, 1, 'one image device');

  // A second daemon on the same root fails on the metadata lock and leaves the socket alone.
  const second = await env!.runSecondSnapshotter();
  assert.notEqual(second.code, 0);
  assert.match(second.stderr, /another snapshotter holds it/);
  assert.match(await env!.ctr('snapshots', '--snapshotter', 'overlaybd', 'ls'), /^conv-long\s/m);

  assert.equal(await env!.stopSnapshotter('SIGKILL'), null, 'killed, no exit code');
  assert.ok(existsSync(env!.snapshotterSocket), 'the dead daemon left its socket file');
  // While it is down the container keeps running on the device its attach session serves.
  const during = await waitForCount(before + 5);
  assert.equal(await exec('down', `${CHECK} && echo down > /etc/down && cat /etc/down`), `${EXPECTED}down\n`);
  await assert.rejects(env!.ctr('snapshots', '--snapshotter', 'overlaybd', 'ls'), 'containerd cannot reach the snapshotter while it is down');

  await env!.startSnapshotter();
  await waitForCount(during + 5);
  assert.equal((await env!.ctr('tasks', 'ls')).match(/^conv-long\s+\d+\s+RUNNING\s*$/m)?.length, 1, 'the task still runs');
  assert.equal(await exec('up', `${CHECK} && echo up > /etc/up && cat /etc/down /etc/up`), `${EXPECTED}down\nup\n`);
  assert.deepEqual(
    (await env!.sessions()).map((s) => s.pid),
    sessions.map((s) => s.pid),
    'the restarted snapshotter kept the attach session serving the image device',
  );
  // ctr operations through the restarted snapshotter, once containerd's proxy client has
  // reconnected (containerd 1.6 redials with a backoff of at most 3 s).
  const reachSnapshotter = async (): Promise<void> => {
    const start = Date.now();
    for (;;) {
      try {
        await env!.ctr('snapshots', '--snapshotter', 'overlaybd', 'usage', 'conv-long');
        break;
      } catch (e) {
        if (!/connection refused|unavailable/i.test(String(e)) || Date.now() - start > 15_000) throw e;
        await new Promise((r) => setTimeout(r, 250));
      }
    }
    console.log(`# containerd reached the restarted snapshotter after ${Date.now() - start} ms`);
  };
  await reachSnapshotter();
  assert.match(await env!.ctr('snapshots', '--snapshotter', 'overlaybd', 'ls'), /^conv-long\s+sha256:\S+\s+Active\s*$/m);
  assert.match(await snapshotMounts('conv-long'), /^mount -t overlay overlay \/target -o .*lowerdir=\S+\/block\/mountpoint/m);
  // A graceful restart (systemctl restart: SIGTERM) leaves the devices alone too.
  assert.equal(await env!.stopSnapshotter('SIGTERM'), 0);
  assert.equal(existsSync(env!.snapshotterSocket), false, 'a graceful stop removes the socket');
  await env!.startSnapshotter();
  await reachSnapshotter();
  await waitForCount((await count()) + 5);
  assert.deepEqual(
    (await env!.sessions()).map((s) => s.pid),
    sessions.map((s) => s.pid),
  );
  await env!.ctr('tasks', 'kill', '-s', 'SIGKILL', 'conv-long');
  for (let i = 0; i < 100 && /^conv-long\s+\d+\s+RUNNING\s*$/m.test(await env!.ctr('tasks', 'ls')); i++) await new Promise((r) => setTimeout(r, 100));
  await env!.ctr('tasks', 'rm', 'conv-long');
  await env!.ctr('containers', 'rm', 'conv-long');
  await env!.ctr('images', 'rm', '--sync', ref);
  assert.equal((await env!.ctr('snapshots', '--snapshotter', 'overlaybd', 'ls')).trim().split('\n').length, 1, 'only the header line is left');
  assert.deepEqual(await env!.sessions(), [], 'removing the image detached its device');
  assert.deepEqual(
    hostMounts().filter((m) => m.mountpoint.startsWith(env!.snapshotterRoot)),
    [],
    'no mount is left in the snapshotter root',
  );
});

test("layers prepared with the CRI plugin's labels (containerd.io/snapshot/cri.*) become remote snapshots and the image runs", T, async () => {
  // What containerd's pull unpacker sends for the CRI plugin (disable_snapshot_annotations = false):
  // the layer's containerd.io/snapshot/* annotations and cri.* labels, no image-ref label.
  const snapshots = join(env!.snapshotterRoot, 'snapshots');
  assert.deepEqual(readdirSync(snapshots), [], 'the previous test removed every snapshot');
  const m = await manifestOf('obd/busybox:obd');
  const chains = await chainIdsOf('obd/busybox', m.config.digest);
  const lease = 'obd-cri-pull';
  await env!.ctr('leases', 'create', '--id', lease);
  const viaContainerd = createSnapshotterClient(env!.sock, { name: 'overlaybd', metadata: { 'containerd-namespace': NS, 'containerd-lease': lease } });
  try {
    for (const [i, layer] of m.layers.entries()) {
      const labels: Record<string, string> = {};
      for (const [k, v] of Object.entries(layer.annotations ?? {})) if (k.startsWith('containerd.io/snapshot/')) labels[k] = v;
      Object.assign(labels, {
        [LABELS.targetRef]: chains[i] as string,
        [LABELS.criImageRef]: ref,
        'containerd.io/snapshot/cri.manifest-digest': m.digest,
        'containerd.io/snapshot/cri.layer-digest': layer.digest,
        'containerd.io/snapshot/cri.image-layers': m.layers.map((l) => l.digest).join(','),
      });
      assert.ok(labels[LABELS.blobDigest] !== undefined && labels[LABELS.imageRef] === undefined);
      await assert.rejects(viaContainerd.prepare(`extract-${i} ${chains[i]}`, i === 0 ? '' : (chains[i - 1] as string), { labels }), AlreadyExistsError);
    }
  } finally {
    await viaContainerd.close();
  }
  // Remote snapshots: the image reference came from cri.image-ref.
  const ids = readdirSync(snapshots);
  assert.equal(ids.length, m.layers.length);
  const configs = ids.map((id) => JSON.parse(readFileSync(join(snapshots, id, 'block', 'config.v1.json'), 'utf8')) as { repoBlobUrl: string; lowers: { digest: string }[] });
  const top = configs.find((c) => c.lowers.length === m.layers.length);
  assert.ok(top !== undefined);
  assert.equal(top.repoBlobUrl, `http://${proxyHost}/v2/obd/busybox/blobs`);
  assert.deepEqual(
    top.lowers.map((l) => l.digest),
    m.layers.map((l) => l.annotations?.[LABELS.blobDigest]),
  );
  for (const id of ids) assert.equal(readFileSync(join(snapshots, id, 'image_ref'), 'utf8'), ref);
  // rpull finds every layer present and records the image; the container runs on the device.
  proxy!.resetCounters();
  const out = await obd('rpull', ref, '--address', env!.sock, '--namespace', NS, '--plain-http', proxyHost);
  assert.equal(out.match(/: already present sha256:/g)?.length, m.layers.length, out);
  assert.ok(proxy!.counters.bytesSent < imageBytes * 0.05);
  assert.equal(await env!.ctrRun('--rm', ref, 'cri-run', 'sh', '-c', CHECK), EXPECTED);
  await env!.ctr('leases', 'rm', lease);
  await env!.ctr('images', 'rm', '--sync', ref);
  assert.deepEqual(readdirSync(snapshots), [], 'removing the image removed the remote snapshots');
  assert.deepEqual(await env!.sessions(), [], 'and detached the image device');
});

test('an accelerated image (trace layer on top) is pulled by rpull; its device replays the trace in the background', T, async () => {
  const m = await manifestOf('obd/busybox:obd');
  const top = m.layers[m.layers.length - 1]!;
  // The converted image plus a trace that reads the whole top layer, which the command below never touches.
  const layoutDir = join(env!.dir, 'accel');
  await obd('push', `${reg!.host}/obd/busybox:obd`, `oci:${layoutDir}:obd`, '--plain-http', reg!.host);
  const trace = encodeTrace([{ op: 'R', layerIndex: m.layers.length - 1, count: 8 << 20, offset: 0 }]);
  await addAccelerationLayer({ layout: await OciLayout.open(layoutDir), from: 'obd', to: 'accel', trace });
  await obd('push', `oci:${layoutDir}:accel`, `${reg!.host}/obd/busybox:accel`, '--plain-http', reg!.host);
  const accelRef = `${proxyHost}/obd/busybox:accel`;
  const accel = await manifestOf('obd/busybox:accel');
  assert.equal(accel.layers.length, m.layers.length + 1);

  await obd('rpull', accelRef, '--address', env!.sock, '--namespace', NS, '--plain-http', proxyHost);
  // The trace layer is a committed snapshot holding the trace file.
  const snapshots = join(env!.snapshotterRoot, 'snapshots');
  const traced = readdirSync(snapshots).filter((id) => existsSync(join(snapshots, id, 'fs', 'trace')));
  assert.equal(traced.length, 1, 'one snapshot holds the trace');
  assert.deepEqual(new Uint8Array(readFileSync(join(snapshots, traced[0]!, 'fs', 'trace'))), trace);

  proxy!.resetCounters();
  assert.equal(await env!.ctrRun(accelRef, 'conv-accel', 'cat', '/etc/layer0'), 'layer0\n');
  const configs = readdirSync(snapshots)
    .map((id) => join(snapshots, id, 'block', 'config.v1.json'))
    .filter((p) => existsSync(p))
    .map((p) => JSON.parse(readFileSync(p, 'utf8')) as { accelerationLayer?: boolean; lowers: unknown[] });
  assert.ok(
    configs.some((c) => c.accelerationLayer === true && c.lowers.length === accel.layers.length),
    'the image device is configured to replay the acceleration layer',
  );
  // `cat /etc/layer0` reads nothing of the top layer's 1 MiB file; the replay fetches all of it.
  const topBytes = (): number => proxy!.counters.blobBytes[top.digest] ?? 0;
  for (let i = 0; i < 300 && topBytes() < top.size * 0.9; i++) await new Promise((r) => setTimeout(r, 100));
  assert.ok(topBytes() >= top.size * 0.9, `${topBytes()} bytes of the top layer fetched; it has ${top.size}`);
  await env!.ctr('containers', 'rm', 'conv-accel');
  await env!.ctr('images', 'rm', '--sync', accelRef);
});
