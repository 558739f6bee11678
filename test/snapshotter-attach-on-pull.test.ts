/**
 * Attach at pull (src/snapshotter/README.md): committing an acceleration layer starts
 * mounting its device in the background; a rootfs Prepare waits for it and reuses the
 * mount (one mount call), a failed background attach is retried by the Prepare, removal
 * detaches, and the option turns it off. Uses the in-process fake device mounter with
 * a gate that holds a mount "in flight".
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSnapshotter, type Snapshotter, type SnapshotterOptions } from '../src/snapshotter/snapshotter.ts';
import { LABELS } from '../src/snapshotter/labels.ts';
import { AlreadyExistsError } from '../src/io/errors.ts';
import type { DeviceMountOptions } from '../src/snapshotter/device-mounter.ts';
import { FakeDeviceMounter } from './fakes/fake-device-mounter.ts';

const IMAGE = 'registry.local/bench/python:obd-accel';
const digest = (n: number): string => `sha256:${String(n).repeat(64).slice(0, 64)}`;

/** The fake mounter whose mounts wait for `release()` while `hold` is set. */
class GatedMounter extends FakeDeviceMounter {
  hold = false;
  #waiters: Array<() => void> = [];
  #entered: Array<() => void> = [];

  override async mount(configPath: string, mountpoint: string, options: DeviceMountOptions): Promise<void> {
    if (this.hold) {
      for (const w of this.#entered.splice(0)) w();
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
    await super.mount(configPath, mountpoint, options);
  }

  /** Resolves once a mount is waiting at the gate. */
  entered(): Promise<void> {
    return new Promise((resolve) => this.#entered.push(resolve));
  }

  release(): void {
    this.hold = false;
    for (const w of this.#waiters.splice(0)) w();
  }
}

async function withSnapshotter(options: SnapshotterOptions, fn: (ctx: { sn: Snapshotter; mounter: GatedMounter; dir: (id: number) => string }) => Promise<void>): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'obd-sn-aop-'));
  const mounter = new GatedMounter();
  const sn = await createSnapshotter(join(tmp, 'root'), { ...options, deviceMounter: mounter });
  const root = await realpath(join(tmp, 'root'));
  try {
    await fn({ sn, mounter, dir: (id) => join(root, 'snapshots', String(id)) });
  } finally {
    mounter.release();
    await sn.close();
    await mounter.unmountAll();
    await rm(tmp, { recursive: true, force: true });
  }
}

/** rpull of a two-layer image plus its acceleration layer (snapshot 3), as rpull does it. */
async function pullAccelerated(sn: Snapshotter, trace = 'TRACE'): Promise<string> {
  let parent = '';
  for (const n of [1, 2]) {
    const labels = { [LABELS.targetRef]: `sha256:chain${n}`, [LABELS.blobDigest]: digest(n), [LABELS.blobSize]: String(1000 * n), [LABELS.imageRef]: IMAGE };
    await assert.rejects(sn.prepare(`extract-${n}`, parent, { labels }), AlreadyExistsError);
    parent = `sha256:chain${n}`;
  }
  const labels = { [LABELS.targetRef]: 'sha256:accel', [LABELS.accelerationLayer]: 'yes', [LABELS.blobDigest]: digest(9), [LABELS.blobSize]: '2048', [LABELS.imageRef]: IMAGE };
  const [bind] = await sn.prepare('extract-accel', parent, { labels });
  assert.equal(bind?.type, 'bind');
  await writeFile(join(bind?.source ?? '', 'trace'), trace);
  await sn.commit('sha256:accel', 'extract-accel', { labels });
  return 'sha256:accel';
}

const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 50));

test('committing an acceleration layer attaches its device in the background, read-only with accelerationLayer set', async () => {
  await withSnapshotter({}, async ({ sn, mounter, dir }) => {
    mounter.hold = true;
    const entered = mounter.entered();
    await pullAccelerated(sn);
    await entered; // the Commit replied while the mount is still in flight
    assert.deepEqual(mounter.mounted, []);
    mounter.release();
    await settle();
    const mounts = mounter.callsOf('mount');
    assert.equal(mounts.length, 1);
    assert.equal(mounts[0]?.mountpoint, join(dir(3), 'block', 'mountpoint'));
    assert.equal(mounts[0]?.configPath, join(dir(3), 'block', 'config.v1.json'));
    assert.equal(mounts[0]?.options.writable, false);
    assert.equal(mounts[0]?.options.mkfs, false);
    const cfg = JSON.parse(await readFile(join(dir(3), 'block', 'config.v1.json'), 'utf8')) as { accelerationLayer?: boolean; lowers: Array<{ dir?: string }> };
    assert.equal(cfg.accelerationLayer, true);
    assert.equal(cfg.lowers.at(-1)?.dir, join(dir(3), 'fs'));
    assert.deepEqual(mounter.mounted, [join(dir(3), 'block', 'mountpoint')]);
  });
});

test('a rootfs Prepare during the background attach waits for it and mounts once; removal detaches', async () => {
  await withSnapshotter({}, async ({ sn, mounter, dir }) => {
    mounter.hold = true;
    const entered = mounter.entered();
    const top = await pullAccelerated(sn);
    await entered;
    let prepared = false;
    const preparing = sn.prepare('container', top).then((m) => {
      prepared = true;
      return m;
    });
    await settle();
    assert.equal(prepared, false, 'Prepare waits for the attach in flight');
    mounter.release();
    const m = await preparing;
    assert.equal(m[0]?.type, 'overlay');
    assert.ok(m[0]?.options.includes(`lowerdir=${join(dir(3), 'block', 'mountpoint')}`));
    assert.equal(mounter.callsOf('mount').length, 1, 'attached once');
    await sn.remove('container');
    await sn.remove(top);
    assert.deepEqual(mounter.callsOf('unmount'), [{ op: 'unmount', mountpoint: join(dir(3), 'block', 'mountpoint') }]);
    assert.deepEqual(mounter.mounted, []);
  });
});

test('removing the acceleration layer while its background attach is in flight detaches it', async () => {
  await withSnapshotter({}, async ({ sn, mounter }) => {
    mounter.hold = true;
    const entered = mounter.entered();
    const top = await pullAccelerated(sn);
    await entered;
    const removing = sn.remove(top);
    await settle();
    mounter.release();
    await removing;
    assert.equal(mounter.callsOf('mount').length, 1);
    assert.equal(mounter.callsOf('unmount').length, 1);
    assert.deepEqual(mounter.mounted, []);
  });
});

test('a failed background attach is logged, not lost: the rootfs Prepare attaches again', async () => {
  await withSnapshotter({}, async ({ sn, mounter, dir }) => {
    mounter.failMount = new Error('injected: FUSE server did not start');
    const top = await pullAccelerated(sn);
    await settle();
    assert.equal(mounter.callsOf('mount').length, 1);
    assert.deepEqual(mounter.mounted, []);
    await sn.prepare('container', top);
    assert.equal(mounter.callsOf('mount').length, 2);
    assert.deepEqual(mounter.mounted, [join(dir(3), 'block', 'mountpoint')]);
  });
});

test('attachOnPull false, another rwMode, or no trace file: nothing is attached at pull', async () => {
  for (const [options, trace] of [
    [{ attachOnPull: false }, 'TRACE'],
    [{ rwMode: 'dir' }, 'TRACE'],
  ] as const) {
    await withSnapshotter(options, async ({ sn, mounter }) => {
      await pullAccelerated(sn, trace);
      await settle();
      assert.deepEqual(mounter.calls, [], JSON.stringify(options));
    });
  }
  await withSnapshotter({}, async ({ sn, mounter }) => {
    for (const n of [1]) {
      const labels = { [LABELS.targetRef]: `sha256:chain${n}`, [LABELS.blobDigest]: digest(n), [LABELS.blobSize]: '1000', [LABELS.imageRef]: IMAGE };
      await assert.rejects(sn.prepare(`extract-${n}`, '', { labels }), AlreadyExistsError);
    }
    const labels = { [LABELS.targetRef]: 'sha256:accel', [LABELS.accelerationLayer]: 'yes' };
    await sn.prepare('extract-accel', 'sha256:chain1', { labels });
    await sn.commit('sha256:accel', 'extract-accel', { labels });
    await settle();
    assert.deepEqual(mounter.calls, [], 'no trace file');
  });
});
