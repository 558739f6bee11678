/**
 * overlaybd behaviour of the snapshotter (snapshotter.md §5–§8) with an in-process
 * device mounter (test/fakes/fake-device-mounter.ts): remote layers committed at
 * Prepare with upstream's exact device config, rootfs mounts over the image device in
 * overlayfs/dir/dev modes, writable layers sealed at Commit, trace labels, TurboOCI and
 * local-block configs, rollbacks, restart, cleanup. Cases that mount for real (the fake
 * bind-mounts a prepared "device" directory and the test mounts the returned overlay)
 * need root.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, realpath, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSnapshotter, type Snapshotter, type SnapshotterOptions } from '../src/snapshotter/snapshotter.ts';
import { LABELS, REMOTE_LABEL_VALUE } from '../src/snapshotter/labels.ts';
import { AlreadyExistsError, FailedPreconditionError, NotFoundError, UnsupportedError } from '../src/io/errors.ts';
import { openWritableLayer } from '../src/formats/lsmt/writable-layer.ts';
import { decodeHeaderTrailer, HEADER_TRAILER_SIZE, isSealed } from '../src/formats/lsmt/header-trailer.ts';
import { ZFILE_MAGIC0, ZFILE_MAGIC1 } from '../src/formats/zfile/header.ts';
import { FakeDeviceMounter } from './fakes/fake-device-mounter.ts';
import { mountAll, unmount, unmountUnder } from './suites/snapshotter-suite.ts';

const ROOT_SKIP = process.getuid?.() === 0 ? false : 'needs root (real bind and overlay mounts)';
const IMAGE = 'docker.io/overlaybd/redis:6.2.1_obd';
const digest = (n: number): string => `sha256:${String(n).repeat(64).slice(0, 64)}`;

interface Ctx {
  sn: Snapshotter;
  mounter: FakeDeviceMounter;
  /** realpath of the snapshotter root. */
  root: string;
  tmp: string;
  dir: (id: number) => string;
  reopen: (options?: SnapshotterOptions) => Promise<Snapshotter>;
}

async function withSnapshotter(
  options: SnapshotterOptions & { bindSource?: (configPath: string) => string | undefined; canAttach?: boolean; noMounter?: boolean },
  fn: (ctx: Ctx) => Promise<void>,
): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'obd-sn-overlaybd-'));
  const mounter = new FakeDeviceMounter({
    ...(options.bindSource === undefined ? {} : { bindSource: options.bindSource }),
    ...(options.canAttach === undefined ? {} : { canAttach: options.canAttach }),
  });
  const { bindSource: _b, canAttach: _c, noMounter, ...rest } = options;
  const snOptions: SnapshotterOptions = noMounter === true ? rest : { ...rest, deviceMounter: mounter };
  let sn = await createSnapshotter(join(tmp, 'root'), snOptions);
  const root = await realpath(join(tmp, 'root'));
  try {
    await fn({
      get sn() {
        return sn;
      },
      mounter,
      root,
      tmp,
      dir: (id) => join(root, 'snapshots', String(id)),
      reopen: async (o = snOptions) => {
        await sn.close();
        sn = await createSnapshotter(join(tmp, 'root'), o);
        return sn;
      },
    });
  } finally {
    if (process.getuid?.() === 0) await unmountUnder(tmp);
    await mounter.unmountAll();
    await sn.close();
    await rm(tmp, { recursive: true, force: true });
  }
}

function remoteLabels(n: number, extra: Record<string, string> = {}): Record<string, string> {
  return {
    [LABELS.targetRef]: `sha256:chain${n}`,
    [LABELS.blobDigest]: digest(n),
    [LABELS.blobSize]: String(1000 * n),
    [LABELS.imageRef]: IMAGE,
    ...extra,
  };
}

/** Pulls remote layer n on `parent` the way containerd does: Prepare → AlreadyExists. */
async function pullRemote(sn: Snapshotter, n: number, on: { parent?: string; extra?: Record<string, string> } = {}): Promise<string> {
  const { parent = '', extra = {} } = on;
  await assert.rejects(sn.prepare(`extract-${n}`, parent, { labels: remoteLabels(n, extra) }), AlreadyExistsError);
  return `sha256:chain${n}`;
}

/** A two-layer remote image: snapshots 1 and 2. */
async function pullImage(sn: Snapshotter, extra: Record<string, string> = {}): Promise<string> {
  const l1 = await pullRemote(sn, 1, { extra });
  return pullRemote(sn, 2, { parent: l1, extra });
}

test('a remote overlaybd layer is committed by Prepare, which answers AlreadyExists, with upstream device config bytes', async () => {
  await withSnapshotter({}, async ({ sn, dir, mounter }) => {
    const top = await pullImage(sn, { [LABELS.criImageRef]: 'registry.local/ignored-for-url:1' });
    await assert.rejects(sn.stat('extract-1'), NotFoundError, 'the active key is gone');
    const info = await sn.stat(top);
    assert.equal(info.kind, 'committed');
    assert.equal(info.parent, 'sha256:chain1');
    assert.equal(info.labels[LABELS.remote], REMOTE_LABEL_VALUE);
    assert.equal(info.labels[LABELS.blobDigest], digest(2));
    const cfg1 = await readFile(join(dir(1), 'block', 'config.v1.json'), 'utf8');
    assert.equal(
      cfg1,
      `{"repoBlobUrl":"https://registry-1.docker.io/v2/overlaybd/redis/blobs","lowers":[{"digest":"${digest(1)}","size":1000,"dir":"${dir(1)}/fs"}],"upper":{},"resultFile":"${dir(1)}/block/init-debug.log"}`,
    );
    const cfg2 = JSON.parse(await readFile(join(dir(2), 'block', 'config.v1.json'), 'utf8')) as { lowers: unknown[] };
    assert.deepEqual(cfg2.lowers, [
      { digest: digest(1), size: 1000, dir: `${dir(1)}/fs` },
      { digest: digest(2), size: 2000, dir: `${dir(2)}/fs` },
    ]);
    assert.equal((await stat(join(dir(2), 'block', 'config.v1.json'))).mode & 0o777, 0o600);
    assert.equal(await readFile(join(dir(2), 'image_ref'), 'utf8'), 'registry.local/ignored-for-url:1', 'cri.image-ref wins for image_ref');
    assert.ok(existsSync(join(dir(2), 'block', 'mountpoint')));
    assert.deepEqual(mounter.calls, [], 'pulling attaches nothing');
    // containerd retries an existing chain ID: AlreadyExists again, nothing new created.
    await assert.rejects(sn.prepare('extract-again', '', { labels: remoteLabels(1) }), AlreadyExistsError);
    assert.deepEqual((await readdir(join(dir(1), '..'))).sort(), ['1', '2']);
  });
});

test('a layer without image-ref labels or blob labels is a normal layer to unpack', async () => {
  await withSnapshotter({}, async ({ sn, dir }) => {
    const labels = remoteLabels(1);
    delete labels[LABELS.imageRef];
    const m = await sn.prepare('extract-1', '', { labels });
    assert.deepEqual(m, [{ type: 'bind', source: `${dir(1)}/fs`, options: ['rw', 'rbind'] }]);
    assert.equal((await sn.stat('extract-1')).kind, 'active');
    await sn.commit('sha256:chain1', 'extract-1', { labels });
    assert.ok(!existsSync(join(dir(1), 'block', 'config.v1.json')));
  });
});

test('an insecure mirror host gets http:// in repoBlobUrl', async () => {
  await withSnapshotter({ mirrorRegistry: [{ host: '127.0.0.1:5000', insecure: true }] }, async ({ sn, dir }) => {
    await pullRemote(sn, 1, { extra: { [LABELS.imageRef]: '127.0.0.1:5000/ns/img@sha256:' + 'a'.repeat(64) } });
    const cfg = JSON.parse(await readFile(join(dir(1), 'block', 'config.v1.json'), 'utf8')) as { repoBlobUrl: string };
    assert.equal(cfg.repoBlobUrl, 'http://127.0.0.1:5000/v2/ns/img/blobs');
  });
});

test('a container rootfs on an overlaybd image mounts the image device once, read-only, under an overlay', async () => {
  await withSnapshotter({ indexOff: true }, async ({ sn, dir, mounter }) => {
    const top = await pullImage(sn, { [LABELS.fsType]: 'xfs;nouuid;' });
    const m = await sn.prepare('container-a', top);
    assert.deepEqual(m, [
      {
        type: 'overlay',
        source: 'overlay',
        options: ['index=off', `workdir=${dir(3)}/work`, `upperdir=${dir(3)}/fs`, `lowerdir=${dir(2)}/block/mountpoint`],
      },
    ]);
    assert.deepEqual(mounter.callsOf('mount'), [
      {
        op: 'mount',
        configPath: `${dir(2)}/block/config.v1.json`,
        mountpoint: `${dir(2)}/block/mountpoint`,
        options: { fstype: 'xfs', mountOptions: ['nouuid'], mkfsOptions: [], writable: false, mkfs: false },
      },
    ]);
    await sn.prepare('container-b', top);
    assert.equal(mounter.callsOf('mount').length, 1, 'the image device is shared');
    assert.deepEqual(await sn.view('view', top), [{ type: 'bind', source: `${dir(2)}/block/mountpoint`, options: ['ro', 'rbind'] }]);
    assert.deepEqual(await sn.mounts('container-a'), m);
    await sn.remove('container-a');
    await sn.remove('container-b');
    assert.deepEqual(mounter.callsOf('unmount'), [], 'without autoRemoveDev the device stays');
    await sn.remove('view');
    await sn.remove(top);
    assert.deepEqual(mounter.callsOf('unmount'), [{ op: 'unmount', mountpoint: `${dir(2)}/block/mountpoint` }], 'removing the image top detaches it');
    assert.ok(!existsSync(dir(2)));
  });
});

test('autoRemoveDev detaches the image device when its last container is removed', async () => {
  await withSnapshotter({ autoRemoveDev: true }, async ({ sn, dir, mounter }) => {
    const top = await pullImage(sn);
    await sn.prepare('c1', top);
    await sn.prepare('c2', top);
    await sn.remove('c1');
    assert.equal(mounter.callsOf('unmount').length, 0);
    await sn.remove('c2');
    assert.deepEqual(mounter.callsOf('unmount'), [{ op: 'unmount', mountpoint: `${dir(2)}/block/mountpoint` }]);
    // Mounts() re-attaches for a container created later.
    await sn.prepare('c3', top);
    assert.equal(mounter.callsOf('mount').length, 2);
  });
});

test('the rootfs overlay over the mounted image device works for real', { skip: ROOT_SKIP }, async () => {
  let image = '';
  await withSnapshotter({ bindSource: () => image }, async ({ sn, tmp, dir }) => {
    image = join(tmp, 'device-fs');
    await mkdir(join(image, 'etc'), { recursive: true });
    await writeFile(join(image, 'etc', 'hostname'), 'from-the-image\n');
    const top = await pullImage(sn);
    const target = join(tmp, 'rootfs');
    await mkdir(target);
    await mountAll(await sn.prepare('container', top), target);
    try {
      assert.equal(await readFile(join(target, 'etc', 'hostname'), 'utf8'), 'from-the-image\n');
      await writeFile(join(target, 'etc', 'hostname'), 'changed\n');
      await assert.rejects(writeFile(join(dir(2), 'block', 'mountpoint', 'x'), 'y'), { code: 'EROFS' }, 'the device is mounted read-only');
    } finally {
      await unmount(target);
    }
    assert.equal(await readFile(join(dir(3), 'fs', 'etc', 'hostname'), 'utf8'), 'changed\n', 'writes land in the upper dir');
    assert.equal(await readFile(join(image, 'etc', 'hostname'), 'utf8'), 'from-the-image\n');
    await sn.remove('container');
  });
});

test('record-trace labels set recordTracePath in the image config; an acceleration layer sets accelerationLayer', async () => {
  await withSnapshotter({}, async ({ sn, dir }) => {
    const top = await pullImage(sn);
    await sn.prepare('traced', top, {
      labels: { [LABELS.recordTrace]: 'yes', [LABELS.recordTracePath]: '/tmp/trace_file' },
    });
    const cfg = JSON.parse(await readFile(join(dir(2), 'block', 'config.v1.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cfg['recordTracePath'], '/tmp/trace_file');
    assert.equal(cfg['accelerationLayer'], undefined);
    await sn.prepare('plain', top);
    const cleared = JSON.parse(await readFile(join(dir(2), 'block', 'config.v1.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(cleared['recordTracePath'], undefined, 'a later container without trace labels clears it');

    // Acceleration (trace) layer on top: pulled as a rw bind, its config = parent + {dir}.
    const accel = await sn.prepare('extract-accel', top, {
      labels: { [LABELS.targetRef]: 'sha256:accel', [LABELS.accelerationLayer]: 'yes' },
    });
    assert.deepEqual(accel, [{ type: 'bind', source: `${dir(5)}/fs`, options: ['rw', 'bind'] }]);
    const acfg = JSON.parse(await readFile(join(dir(5), 'block', 'config.v1.json'), 'utf8')) as { lowers: unknown[] };
    assert.deepEqual(acfg.lowers.at(-1), { dir: `${dir(5)}/fs` });
    await writeFile(join(dir(5), 'fs', 'trace'), '');
    await sn.commit('sha256:accel', 'extract-accel', { labels: { [LABELS.targetRef]: 'sha256:accel', [LABELS.accelerationLayer]: 'yes' } });
    await sn.prepare('accelerated', 'sha256:accel');
    const after = JSON.parse(await readFile(join(dir(5), 'block', 'config.v1.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(after['accelerationLayer'], true);
  });
});

test('dir mode: a writable device per container, sealed into overlaybd.sealed at Commit', async () => {
  await withSnapshotter({}, async ({ sn, dir, mounter }) => {
    const top = await pullImage(sn);
    const m = await sn.prepare('rw', top, { labels: { [LABELS.writable]: 'dir' } });
    assert.deepEqual(m, [{ type: 'bind', source: `${dir(3)}/block/mountpoint`, options: ['rw', 'rbind'] }]);
    const own = JSON.parse(await readFile(join(dir(3), 'block', 'config.v1.json'), 'utf8')) as { lowers: unknown[]; upper: unknown };
    assert.equal(own.lowers.length, 2);
    assert.deepEqual(own.upper, { index: `${dir(3)}/block/writable_index`, data: `${dir(3)}/block/writable_data` });
    assert.deepEqual(mounter.callsOf('mount').map((c) => [c.mountpoint, c.options.writable, c.options.mkfs]), [[`${dir(3)}/block/mountpoint`, true, false]]);
    // Write through the real LSMT writable layer as the device would.
    const layer = await openWritableLayer({ data: join(dir(3), 'block', 'writable_data'), index: join(dir(3), 'block', 'writable_index') });
    await layer.write(new Uint8Array(4096).fill(7), 8192);
    await layer.close();
    await sn.commit('sealed', 'rw');
    assert.deepEqual(mounter.callsOf('unmount'), [{ op: 'unmount', mountpoint: `${dir(3)}/block/mountpoint` }]);
    assert.ok(!existsSync(join(dir(3), 'block', 'writable_data')));
    assert.ok(!existsSync(join(dir(3), 'block', 'writable_index')));
    const sealed = await readFile(join(dir(3), 'fs', 'overlaybd.sealed'));
    const trailer = decodeHeaderTrailer(sealed.subarray(sealed.length - HEADER_TRAILER_SIZE));
    assert.ok(isSealed(trailer));
    assert.equal(trailer.indexSize, 1);
    const info = await sn.stat('sealed');
    assert.equal(info.labels[LABELS.localCommitPath], `${dir(3)}/fs/overlaybd.sealed`);
    assert.equal(info.labels[LABELS.writable], undefined);
    const cfg = JSON.parse(await readFile(join(dir(3), 'block', 'config.v1.json'), 'utf8')) as { lowers: unknown[]; upper: unknown };
    assert.deepEqual(cfg.lowers.at(-1), { dir: `${dir(3)}/fs` });
    assert.deepEqual(cfg.upper, {});
    // The sealed layer is a local block layer: a container on it mounts its device.
    await sn.prepare('on-sealed', 'sealed');
    assert.equal(mounter.callsOf('mount').at(-1)?.configPath, `${dir(3)}/block/config.v1.json`);
  });
});

test('dir mode without a parent: a blank device of vsize GiB gets mkfs', async () => {
  await withSnapshotter({ rwMode: 'dir', writableLayerType: 'sparse' }, async ({ sn, dir, mounter }) => {
    await sn.prepare('blank', '', { labels: { [LABELS.vsize]: '2' } });
    const [call] = mounter.callsOf('mount');
    assert.equal(call?.options.mkfs, true);
    assert.equal(call?.options.fstype, 'ext4');
    assert.deepEqual(call?.options.mkfsOptions, ['-O', '^has_journal,sparse_super,flex_bg', '-G', '1', '-E', 'discard', '-F']);
    const layer = await openWritableLayer({ data: join(dir(1), 'block', 'writable_data'), index: join(dir(1), 'block', 'writable_index') });
    assert.equal(layer.virtualSize, 2 * 2 ** 30);
    assert.equal(layer.sparse, true);
    await layer.close();
    // After the device went away (daemon restart), Mounts re-attaches it without mkfs.
    await mounter.unmount(`${dir(1)}/block/mountpoint`);
    assert.deepEqual(await sn.mounts('blank'), [{ type: 'bind', source: `${dir(1)}/block/mountpoint`, options: ['rw', 'rbind'] }]);
    assert.deepEqual(mounter.callsOf('mount').map((c) => c.options.mkfs), [true, false]);
    // Plain (non-overlaybd) parents always get overlayfs, whatever rwMode says.
    await sn.prepare('p', '', { labels: { [LABELS.snapshotType]: 'image' } });
    await sn.commit('plain', 'p');
    const m = await sn.prepare('on-plain', 'plain', { labels: { [LABELS.writable]: 'dir' } });
    assert.equal(m[0]?.type, 'overlay');
    assert.equal((await sn.stat('on-plain')).labels[LABELS.writable], undefined, 'the writable label is dropped for a normal rootfs');
  });
});

test('dev mode hands out the block device; without attach support it is UnsupportedError and nothing is left', async () => {
  await withSnapshotter({}, async ({ sn, dir, mounter }) => {
    const top = await pullImage(sn);
    const m = await sn.prepare('dev', top, { labels: { [LABELS.writable]: 'dev' } });
    assert.deepEqual(m, [{ type: 'ext4', source: '/dev/fake0', options: ['rw', 'discard'] }]);
    assert.equal(await readFile(join(dir(3), 'block', 'backstore_mark'), 'utf8'), '/dev/fake0');
    assert.deepEqual(await sn.mounts('dev'), m);
    assert.equal(mounter.callsOf('attach').length, 1);
    await sn.remove('dev');
    assert.deepEqual(mounter.callsOf('detach'), [{ op: 'detach', configPath: `${dir(3)}/block/config.v1.json` }]);
  });
  await withSnapshotter({ canAttach: false }, async ({ sn, root }) => {
    const top = await pullImage(sn);
    await assert.rejects(sn.prepare('dev', top, { labels: { [LABELS.writable]: 'dev' } }), UnsupportedError);
    await assert.rejects(sn.stat('dev'), NotFoundError);
    assert.deepEqual((await readdir(join(root, 'snapshots'))).sort(), ['1', '2']);
  });
});

test('a failing device mount rolls Prepare back; without a mounter overlaybd rootfs is UnsupportedError', async () => {
  await withSnapshotter({}, async ({ sn, root, mounter }) => {
    const top = await pullImage(sn);
    mounter.failMount = new Error('injected: attach failed');
    await assert.rejects(sn.prepare('c', top), /injected/);
    await assert.rejects(sn.stat('c'), NotFoundError);
    assert.deepEqual((await readdir(join(root, 'snapshots'))).sort(), ['1', '2']);
    // The ID of the rolled-back snapshot is handed out again without trouble.
    await sn.prepare('c', top);
    assert.deepEqual((await readdir(join(root, 'snapshots'))).sort(), ['1', '2', '3']);
  });
  await withSnapshotter({ noMounter: true }, async ({ sn, root }) => {
    const top = await pullImage(sn);
    await assert.rejects(sn.prepare('c', top), UnsupportedError);
    await assert.rejects(sn.stat('c'), NotFoundError);
    assert.deepEqual((await readdir(join(root, 'snapshots'))).sort(), ['1', '2']);
  });
});

test('download mode and TurboOCI layers are unpacked locally; their configs are written', async () => {
  await withSnapshotter({}, async ({ sn, dir }) => {
    const dl = await sn.prepare('extract-dl', '', { labels: remoteLabels(1, { [LABELS.downloadRemoteBlob]: 'download' }) });
    assert.deepEqual(dl, [{ type: 'bind', source: `${dir(1)}/fs`, options: ['rw', 'bind'] }]);
    assert.ok(existsSync(join(dir(1), 'block', 'config.v1.json')));
    assert.equal((await sn.stat('extract-dl')).kind, 'active');

    const turbo = remoteLabels(2, {
      [LABELS.turboOciTargetDigest]: digest(9),
      [LABELS.turboOciTargetMediaType]: 'application/vnd.oci.image.layer.v1.tar+gzip',
    });
    const m = await sn.prepare('extract-turbo', '', { labels: turbo });
    assert.deepEqual(m, [{ type: 'bind', source: `${dir(2)}/fs`, options: ['rw', 'rbind'] }]);
    await writeFile(join(dir(2), 'fs', 'ext4.fs.meta'), 'meta');
    await sn.commit('sha256:chain2', 'extract-turbo', { labels: turbo });
    const cfg = await readFile(join(dir(2), 'block', 'config.v1.json'), 'utf8');
    assert.equal(
      cfg,
      `{"repoBlobUrl":"https://registry-1.docker.io/v2/overlaybd/redis/blobs","lowers":[{"gzipIndex":"${dir(2)}/fs/gzip.meta","file":"${dir(2)}/fs/ext4.fs.meta","targetDigest":"${digest(9)}","dir":"${dir(2)}/fs"}],"upper":{},"resultFile":"${dir(2)}/block/init-debug.log"}`,
    );
    // Without an image reference a TurboOCI layer cannot be committed (upstream's quirk).
    const noRef: Record<string, string> = { ...turbo, [LABELS.targetRef]: 'sha256:x' };
    delete noRef[LABELS.imageRef];
    await sn.prepare('extract-noref', '', { labels: noRef });
    await assert.rejects(sn.commit('sha256:x', 'extract-noref', { labels: noRef }), FailedPreconditionError);
    assert.equal((await sn.stat('extract-noref')).kind, 'active', 'the failed commit is rolled back');
  });
});

test('a layer unpacked to fs/overlaybd.commit becomes a local block layer at Commit', async () => {
  await withSnapshotter({}, async ({ sn, dir, mounter }) => {
    const labels: Record<string, string> = { [LABELS.targetRef]: 'sha256:local', [LABELS.blobDigest]: digest(1), [LABELS.blobSize]: '1000' };
    await sn.prepare('extract', '', { labels });
    await writeFile(join(dir(1), 'fs', 'overlaybd.commit'), Buffer.concat([ZFILE_MAGIC0, ZFILE_MAGIC1, Buffer.alloc(512)]));
    await sn.commit('sha256:local', 'extract', { labels });
    const info = await sn.stat('sha256:local');
    assert.equal(info.labels[LABELS.localCommitPath], `${dir(1)}/fs/overlaybd.sealed`);
    assert.equal(
      await readFile(join(dir(1), 'block', 'config.v1.json'), 'utf8'),
      `{"repoBlobUrl":"","lowers":[{"dir":"${dir(1)}/fs"}],"upper":{},"resultFile":"${dir(1)}/block/init-debug.log"}`,
    );
    await sn.prepare('container', 'sha256:local');
    assert.equal(mounter.callsOf('mount').length, 1);
  });
});

test('metadata and devices survive a restart; a second owner of the root is refused', async () => {
  await withSnapshotter({}, async ({ sn, tmp, dir, reopen, mounter }) => {
    const top = await pullImage(sn);
    const m = await sn.prepare('container', top, { labels: { keep: 'me' } });
    await assert.rejects(createSnapshotter(join(tmp, 'root')), FailedPreconditionError);
    const again = await reopen();
    assert.deepEqual((await again.stat('container')).labels, { keep: 'me' });
    assert.equal((await again.stat(top)).labels[LABELS.remote], REMOTE_LABEL_VALUE);
    assert.deepEqual(await again.mounts('container'), m);
    assert.equal(mounter.callsOf('mount').length, 1, 'still mounted: not mounted again');
    await again.prepare('next', top);
    assert.ok(existsSync(dir(4)), 'IDs continue after a restart');
  });
});

test('cleanup() deletes orphaned snapshot directories but never one with a mount inside', async () => {
  await withSnapshotter({ asyncRemove: true }, async ({ sn, root, tmp }) => {
    await sn.prepare('a', '');
    await sn.prepare('b', '');
    await sn.remove('a');
    assert.ok(existsSync(join(root, 'snapshots', '1')), 'asyncRemove leaves the directory');
    await mkdir(join(root, 'snapshots', 'new-stale'));
    let mounted = false;
    if (process.getuid?.() === 0) {
      await mkdir(join(root, 'snapshots', '99', 'fs'), { recursive: true });
      await mkdir(join(tmp, 'elsewhere'));
      await writeFile(join(tmp, 'elsewhere', 'precious'), 'x');
      await mountAll([{ type: 'bind', source: join(tmp, 'elsewhere'), options: ['rw', 'bind'] }], join(root, 'snapshots', '99', 'fs'));
      mounted = true;
    }
    await sn.cleanup();
    const left = (await readdir(join(root, 'snapshots'))).sort();
    assert.deepEqual(left, mounted ? ['2', '99'] : ['2']);
    if (mounted) {
      await unmount(join(root, 'snapshots', '99', 'fs'));
      assert.equal(await readFile(join(tmp, 'elsewhere', 'precious'), 'utf8'), 'x', 'nothing deleted through the mount');
      await sn.cleanup();
      assert.deepEqual((await readdir(join(root, 'snapshots'))).sort(), ['2']);
    }
  });
});
