/**
 * A conformance suite for any {@link Snapshotter}: containerd's
 * `core/snapshots/testsuite` translated to node:test, plus error-code and usage cases
 * containerd checks elsewhere. Call `snapshotterSuite(name, factory)` once per
 * implementation (direct, over gRPC, …); each case gets a fresh temporary root.
 *
 * File-system cases mount what the snapshotter returns (bind and overlay mounts, with
 * containerd's trick of relative lowerdirs when the option string would exceed a page)
 * and need root; without root they are skipped with that reason. Every mount a case
 * makes is undone in `finally`, and anything left under the case's directory is
 * unmounted before it is deleted.
 *
 * @example
 * ```ts
 * snapshotterSuite('overlaybd', async (root) => ({ snapshotter: await createSnapshotter(root) }));
 * ```
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmod, lchown, link, lstat, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, sep } from 'node:path';
import type { Info, Kind, Mount, Snapshotter } from '../../src/snapshotter/snapshotter.ts';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../src/io/errors.ts';

/** What a factory returns: the snapshotter and how to tear it down. */
export interface SnapshotterFixture {
  snapshotter: Snapshotter;
  cleanup?: () => Promise<void>;
}

/** Creates a snapshotter whose state lives under `root` (an empty directory). */
export type SnapshotterFactory = (root: string) => Promise<SnapshotterFixture>;

/** Options of {@link snapshotterSuite}. */
export interface SnapshotterSuiteOptions {
  /** Directory renames in a lower layer work (not on overlayfs without redirect_dir). Default false. */
  renameLowerDirectories?: boolean;
  /** Layers of the many-layers case (containerd uses 128). */
  manyLayers?: number;
}

const IS_ROOT = process.getuid?.() === 0;
const FS_SKIP = IS_ROOT ? false : 'mounting snapshots needs root';
const gcRoot = (): Record<string, string> => ({ 'containerd.io/gc.root': new Date().toISOString() });
const opt = (): { labels: Record<string, string> } => ({ labels: gcRoot() });

// ---- mounting ------------------------------------------------------------------------

function run(argv: string[], cwd?: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: 30_000, ...(cwd === undefined ? {} : { cwd }) }, (err, _out, stderr) => {
      if (err) reject(new Error(`${argv.join(' ').slice(0, 500)} failed: ${stderr.toString().trim() || err.message}`));
      else resolve();
    });
  });
}

/** Longest common directory of absolute paths. */
function commonDir(paths: string[]): string {
  let parts = (paths[0] as string).split(sep);
  for (const p of paths.slice(1)) {
    const q = p.split(sep);
    let i = 0;
    while (i < parts.length && i < q.length && parts[i] === q[i]) i++;
    parts = parts.slice(0, i);
  }
  return parts.join(sep) || sep;
}

/** Mounts `mounts` at `target` (containerd `mount.All`). */
export async function mountAll(mounts: Mount[], target: string): Promise<void> {
  for (const m of mounts) {
    if (m.type === 'bind') {
      await run(['mount', '-o', m.options.join(','), m.source, target]);
      continue;
    }
    let options = m.options;
    let cwd: string | undefined;
    if (m.type === 'overlay' && options.join(',').length > 4000) {
      // containerd's compactLowerdirOption: relative lowerdirs from their common parent.
      const lower = options.find((o) => o.startsWith('lowerdir='));
      const dirs = (lower ?? 'lowerdir=').slice('lowerdir='.length).split(':');
      cwd = commonDir(dirs.map((d) => dirname(d)));
      options = options.map((o) => (o === lower ? `lowerdir=${dirs.map((d) => relative(cwd as string, d)).join(':')}` : o));
    }
    await run(['mount', '-t', m.type, '-o', options.join(','), m.source, target], cwd);
  }
}

export async function unmount(target: string): Promise<void> {
  await run(['umount', target]);
}

/** Unmounts everything at or below `dir` (deepest first). */
export async function unmountUnder(dir: string): Promise<void> {
  const points = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(dir + sep)))
    .sort((a, b) => b.length - a.length);
  for (const p of points) await run(['umount', '-l', p]).catch(() => undefined);
}

// ---- appliers and tree comparison (continuity fstest) ------------------------------------

/** A change to a directory tree. */
export type Applier = (root: string) => Promise<void>;

export const fstest = {
  createFile: (p: string, content: string, mode: number): Applier => async (root) => {
    await writeFile(join(root, p), content);
    await chmod(join(root, p), mode);
  },
  createDir: (p: string, mode: number): Applier => async (root) => {
    await mkdir(join(root, p));
    await chmod(join(root, p), mode);
  },
  removeAll: (p: string): Applier => async (root) => {
    await rm(join(root, p), { recursive: true, force: true });
  },
  chown: (p: string, uid: number, gid: number): Applier => async (root) => {
    await lchown(join(root, p), uid, gid);
  },
  link: (oldPath: string, newPath: string): Applier => async (root) => {
    await link(join(root, oldPath), join(root, newPath));
  },
  rename: (oldPath: string, newPath: string): Applier => async (root) => {
    await rename(join(root, oldPath), join(root, newPath));
  },
  apply:
    (...as: Applier[]): Applier =>
    async (root) => {
      for (const a of as) await a(root);
    },
};

/**
 * A comparable description of every entry below `root` (the root itself excluded).
 * Synchronous on purpose: tens of thousands of entries in the many-layers case, and a
 * thread-pool hop per call would dominate the suite's runtime.
 */
function describeTree(root: string): Map<string, string> {
  const out = new Map<string, string>();
  const visit = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const r = join(rel, name);
      const p = join(root, r);
      const st = lstatSync(p);
      let what = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
      if (st.isDirectory()) what = `dir ${what}`;
      else if (st.isSymbolicLink()) what = `symlink ${what} -> ${readlinkSync(p)}`;
      else if (st.isFile()) what = `file ${what} ${createHash('sha256').update(readFileSync(p)).digest('hex')}`;
      else what = `other ${what} ${st.rdev}`;
      out.set(r, what);
      if (st.isDirectory()) visit(r);
    }
  };
  visit('');
  return out;
}

/** Asserts both trees hold the same entries, modes, owners and contents. */
export async function checkDirectoryEqual(expected: string, actual: string): Promise<void> {
  assert.deepEqual(Object.fromEntries(describeTree(actual)), Object.fromEntries(describeTree(expected)));
}

// ---- helpers of containerd's suite --------------------------------------------------

let counter = 0;
const uniqueName = (): string => `layer-${++counter}-${Math.random().toString(36).slice(2, 8)}`;

async function applyToMounts(mounts: Mount[], work: string, a: Applier): Promise<void> {
  const td = await mkdtemp(join(work, 'prepare'));
  await mountAll(mounts, td);
  try {
    await a(td);
  } finally {
    await unmount(td);
    await rm(td, { recursive: true, force: true });
  }
}

async function createSnapshot(sn: Snapshotter, at: { parent: string; work: string }, a: Applier): Promise<string> {
  const { parent, work } = at;
  const n = uniqueName();
  const prepare = `${n}-prepare`;
  const m = await sn.prepare(prepare, parent, opt());
  await applyToMounts(m, work, a);
  await sn.commit(n, prepare, opt());
  return n;
}

async function checkSnapshot(sn: Snapshotter, name: string, dirs: { work: string; check: string }): Promise<void> {
  const { work, check } = dirs;
  const td = await mkdtemp(join(work, 'check'));
  const view = `${name}-view`;
  const m = await sn.view(view, name, opt());
  try {
    await mountAll(m, td);
    try {
      await checkDirectoryEqual(check, td);
    } finally {
      await unmount(td);
    }
  } finally {
    await sn.remove(view);
    await rm(td, { recursive: true, force: true });
  }
}

/** Builds a chain with the appliers, checking each snapshot's view against one flat directory. */
async function checkSnapshots(sn: Snapshotter, work: string, ...as: Applier[]): Promise<void> {
  const flat = await mkdtemp(join(work, 'flat'));
  let parent = '';
  for (const a of as) {
    const s = await createSnapshot(sn, { parent, work }, a);
    await a(flat);
    await checkSnapshot(sn, s, { work, check: flat });
    parent = s;
  }
}

async function prepareMount(sn: Snapshotter, work: string, at: { key: string; parent: string }): Promise<string> {
  const { key, parent } = at;
  const target = join(work, key);
  await mkdir(target, { recursive: true });
  const mounts = await sn.prepare(target, parent, opt());
  assert.ok(mounts.length >= 1, 'expected mounts to have entries');
  await mountAll(mounts, target);
  return target;
}

async function walkNames(sn: Snapshotter, filters: string[] = []): Promise<string[]> {
  const names: string[] = [];
  await sn.walk((i) => {
    names.push(i.name);
  }, filters);
  return names.sort();
}

/** Creates c1 ← c2 ← a1, a2, c2 ← v1, v2 (containerd `baseTestSnapshots`). */
async function baseTestSnapshots(sn: Snapshotter): Promise<void> {
  await sn.prepare('c1-a', '', opt());
  await sn.commit('c1', 'c1-a', opt());
  await sn.prepare('c2-a', 'c1', opt());
  await sn.commit('c2', 'c2-a', opt());
  await sn.prepare('a1', 'c2', opt());
  await sn.prepare('a2', '', opt());
  await sn.view('v1', 'c2', opt());
  await sn.view('v2', '', opt());
}

function checkInfo(a: Info, b: Info): void {
  assert.equal(b.kind, a.kind);
  assert.equal(b.name, a.name);
  assert.equal(b.parent, a.parent);
  assert.deepEqual(b.labels, a.labels);
  assert.equal(b.created.getTime(), a.created.getTime());
  assert.equal(b.updated.getTime(), a.updated.getTime());
}

// ---- the suite ------------------------------------------------------------------------

type Case = (sn: Snapshotter, work: string) => Promise<void>;

/** Registers the conformance cases for one implementation. */
export function snapshotterSuite(name: string, factory: SnapshotterFactory, options: SnapshotterSuiteOptions = {}): void {
  const run = (title: string, fn: Case, o: { fs?: boolean; timeout?: number } = {}): void => {
    test(title, { timeout: o.timeout ?? 60_000, skip: o.fs === true ? FS_SKIP : false }, async () => {
      const tmp = await mkdtemp(join(tmpdir(), 'obd-snapshot-suite-'));
      const root = join(tmp, 'root');
      const work = join(tmp, 'work');
      await mkdir(root, { recursive: true });
      await mkdir(work, { recursive: true });
      let fixture: SnapshotterFixture | undefined;
      try {
        fixture = await factory(root);
        await fn(fixture.snapshotter, work);
      } finally {
        if (IS_ROOT) await unmountUnder(tmp);
        await fixture?.cleanup?.();
        if (IS_ROOT) await unmountUnder(tmp);
        await rm(tmp, { recursive: true, force: true });
      }
    });
  };

  describe(`snapshotterSuite(${name})`, () => {
    run('Basic: prepare, commit, chain, view, walk and remove', async (sn, work) => {
      const initial = fstest.apply(
        fstest.createFile('/foo', 'foo\n', 0o777),
        fstest.createDir('/a', 0o755),
        fstest.createDir('/a/b', 0o755),
        fstest.createDir('/a/b/c', 0o755),
      );
      const diff = fstest.apply(fstest.createFile('/bar', 'bar\n', 0o777), fstest.createFile('/foo', 'bar\n', 0o777), fstest.removeAll('/a/b'));
      const preparing = await prepareMount(sn, work, { key: 'preparing', parent: '' });
      try {
        await initial(preparing);
      } finally {
        await unmount(preparing);
      }
      const committed = join(work, 'committed');
      await sn.commit(committed, preparing, opt());
      const si = await sn.stat(committed);
      assert.equal(si.parent, '');
      assert.equal(si.kind, 'committed');
      await assert.rejects(sn.stat(preparing), NotFoundError, 'the active key is gone after commit');

      const next = await prepareMount(sn, work, { key: 'nextlayer', parent: committed });
      try {
        const expected = await mkdtemp(join(work, 'expect'));
        await initial(expected);
        await checkDirectoryEqual(expected, next);
        await diff(next);
      } finally {
        await unmount(next);
      }
      const ni = await sn.stat(next);
      assert.equal(ni.parent, committed);
      assert.equal(ni.kind, 'active');
      const nextCommitted = join(work, 'committed-next');
      await sn.commit(nextCommitted, next, opt());
      const si2 = await sn.stat(nextCommitted);
      assert.equal(si2.parent, committed);
      assert.equal(si2.kind, 'committed');
      await assert.rejects(sn.stat(next), NotFoundError);

      const walked = new Map<string, Info>();
      await sn.walk((i) => {
        walked.set(i.name, i);
      });
      checkInfo(si, walked.get(si.name)!);
      checkInfo(si2, walked.get(si2.name)!);

      const nextnext = join(work, 'nextnextlayer');
      await mkdir(nextnext);
      const mounts = await sn.view(nextnext, nextCommitted, opt());
      await mountAll(mounts, nextnext);
      try {
        const expected = await mkdtemp(join(work, 'expect'));
        await fstest.apply(initial, diff)(expected);
        await checkDirectoryEqual(expected, nextnext);
      } finally {
        await unmount(nextnext);
      }
      await sn.remove(nextnext);
      await assert.rejects(sn.remove(committed), (e: Error) => e instanceof FailedPreconditionError && /remove/.test(e.message));
      await sn.remove(nextCommitted);
      await sn.remove(committed);
    }, { fs: true });

    run('StatActive: a prepared snapshot is active with no parent', async (sn, work) => {
      const preparing = await prepareMount(sn, work, { key: 'preparing', parent: '' });
      try {
        await writeFile(join(preparing, 'foo'), 'foo\n');
      } finally {
        await unmount(preparing);
      }
      const si = await sn.stat(preparing);
      assert.equal(si.name, preparing);
      assert.equal(si.kind, 'active');
      assert.equal(si.parent, '');
    }, { fs: true });

    run('StatCommitted: a committed snapshot is committed with no parent', async (sn, work) => {
      const preparing = await prepareMount(sn, work, { key: 'preparing', parent: '' });
      try {
        await writeFile(join(preparing, 'foo'), 'foo\n');
      } finally {
        await unmount(preparing);
      }
      const committed = join(work, 'committed');
      await sn.commit(committed, preparing, opt());
      const si = await sn.stat(committed);
      assert.equal(si.name, committed);
      assert.equal(si.kind, 'committed');
      assert.equal(si.parent, '');
    }, { fs: true });

    run('Transitivity: A ← B, the parent of B has no parent', async (sn, work) => {
      const preparing = await prepareMount(sn, work, { key: 'preparing', parent: '' });
      try {
        await writeFile(join(preparing, 'foo'), 'foo\n');
      } finally {
        await unmount(preparing);
      }
      const snapA = join(work, 'snapA');
      await sn.commit(snapA, preparing, opt());
      const next = await prepareMount(sn, work, { key: 'next', parent: snapA });
      try {
        await writeFile(join(next, 'foo'), 'foo bar\n');
      } finally {
        await unmount(next);
      }
      const snapB = join(work, 'snapB');
      await sn.commit(snapB, next, opt());
      const siA = await sn.stat(snapA);
      const siB = await sn.stat(snapB);
      const siParentB = await sn.stat(siB.parent);
      assert.equal(siA.parent, '');
      assert.equal(siB.parent, snapA);
      assert.equal(siParentB.parent, '');
    }, { fs: true });

    run('PrepareView: a key used by prepare or view cannot be reused', async (sn) => {
      await sn.prepare('preparing', '', opt());
      await sn.commit('snapA', 'preparing', opt());
      await sn.prepare('newlayer', 'snapA', opt());
      await assert.rejects(sn.view('newlayer', 'snapA', opt()), AlreadyExistsError);
      await sn.prepare('prepLayer', 'snapA', opt());
      await assert.rejects(sn.prepare('prepLayer', 'snapA', opt()), AlreadyExistsError);
      await sn.view('viewLayer', 'snapA', opt());
      await assert.rejects(sn.view('viewLayer', 'snapA', opt()), AlreadyExistsError);
    });

    run('Update: labels change by field path, the rest is immutable', async (sn) => {
      const t1 = Date.now();
      await baseTestSnapshots(sn);
      const t2 = Date.now();
      const cases: { name: string; kind: Kind; parent: string }[] = [
        { name: 'c1', kind: 'committed', parent: '' },
        { name: 'c2', kind: 'committed', parent: 'c1' },
        { name: 'a1', kind: 'active', parent: 'c2' },
        { name: 'a2', kind: 'active', parent: '' },
        { name: 'v1', kind: 'view', parent: 'c2' },
        { name: 'v2', kind: 'view', parent: '' },
      ];
      for (const tc of cases) {
        let st = await sn.stat(tc.name);
        assert.ok(st.created.getTime() >= t1 && st.created.getTime() <= t2, `${tc.name}: created ${st.created.toISOString()}`);
        assert.equal(st.updated.getTime(), st.created.getTime(), `${tc.name}: updated equals created`);
        assert.equal(st.kind, tc.kind);
        assert.equal(st.parent, tc.parent);
        assert.equal(st.name, tc.name);
        const created = st.created.getTime();
        const rootTime = new Date().toISOString();
        let expected: Record<string, string> = { l1: 'v1', l2: 'v2', l3: 'v3', 'containerd.io/gc.root': rootTime };
        const u1 = Date.now();
        st = await sn.update({ ...st, parent: 'doesnotexist', labels: expected });
        const u2 = Date.now();
        assert.equal(st.created.getTime(), created, `${tc.name}: created is immutable`);
        assert.ok(st.updated.getTime() >= u1 && st.updated.getTime() <= u2, `${tc.name}: updated ${st.updated.toISOString()}`);
        assert.equal(st.kind, tc.kind);
        assert.equal(st.parent, tc.parent, `${tc.name}: parent is immutable`);
        assert.equal(st.name, tc.name);
        assert.deepEqual(st.labels, expected);

        expected = { l1: 'updated', l3: 'v3', 'containerd.io/gc.root': rootTime };
        st = await sn.update({ ...st, labels: { l1: 'updated', l4: 'v4' } }, ['labels.l1', 'labels.l2']);
        assert.deepEqual(st.labels, expected);

        expected = { l4: 'v4', 'containerd.io/gc.root': rootTime };
        st = await sn.update({ ...st, labels: expected }, ['labels']);
        assert.deepEqual(st.labels, expected);
        assert.deepEqual((await sn.stat(tc.name)).labels, expected, 'the update is stored');

        await assert.rejects(sn.update({ ...st, parent: 'doesnotexist' }, ['parent']), InvalidArgumentError);
      }
    });

    run('Remove: keys and names can be reused after removal', async (sn) => {
      await sn.prepare('committed-a', '', opt());
      await sn.commit('committed-1', 'committed-a', opt());
      await sn.prepare('reuse-1', 'committed-1', opt());
      await sn.remove('reuse-1');
      await sn.view('reuse-1', 'committed-1', opt());
      await sn.remove('reuse-1');
      await sn.prepare('reuse-1', '', opt());
      await sn.remove('committed-1');
      await sn.commit('committed-1', 'reuse-1', opt());
    });

    run('Walk: filters by kind, name, parent and labels', async (sn) => {
      const w = { labels: { 'containerd.io/gc.root': 'check-walk' } };
      const wl = (l: string) => ({ labels: { l, 'containerd.io/gc.root': 'check-walk' } });
      await sn.prepare('a-np', '', w);
      await sn.prepare('p-tmp', '', w);
      await sn.commit('p', 'p-tmp', w);
      await sn.prepare('a', 'p', w);
      await sn.view('v', 'p', w);
      await sn.prepare('p-wl-tmp', '', w);
      await sn.commit('p-wl', 'p-wl-tmp', wl('1'));
      await sn.prepare('a-wl', 'p-wl', wl('2'));
      await sn.view('v-wl', 'p-wl', wl('3'));
      await sn.prepare('a-np-wl', '', wl('2'));
      const cases: { matches: string[]; filters: string[] }[] = [
        { matches: ['a-np', 'p', 'a', 'v', 'p-wl', 'a-wl', 'v-wl', 'a-np-wl'], filters: ['labels."containerd.io/gc.root"==check-walk'] },
        { matches: ['a-np', 'a', 'a-wl', 'a-np-wl'], filters: ['kind==active,labels."containerd.io/gc.root"==check-walk'] },
        { matches: ['v', 'v-wl'], filters: ['kind==view,labels."containerd.io/gc.root"==check-walk'] },
        { matches: ['p', 'p-wl'], filters: ['kind==committed,labels."containerd.io/gc.root"==check-walk'] },
        { matches: ['p', 'a-np-wl'], filters: ['name==p', 'name==a-np-wl'] },
        { matches: ['a-wl'], filters: ['name==a-wl,labels.l'] },
        { matches: ['a', 'v'], filters: ['parent==p'] },
        { matches: ['a', 'v', 'a-wl', 'v-wl'], filters: ['parent!="",labels."containerd.io/gc.root"==check-walk'] },
        { matches: ['p-wl', 'a-wl', 'v-wl', 'a-np-wl'], filters: ['labels.l'] },
        { matches: ['a-wl', 'a-np-wl'], filters: ['labels.l==2'] },
        { matches: ['a-np', 'a-np-wl'], filters: ['name~=^a-np'] },
      ];
      for (const [i, tc] of cases.entries()) {
        assert.deepEqual(await walkNames(sn, tc.filters), [...tc.matches].sort(), `case ${i}: ${tc.filters.join(' | ')}`);
      }
      await assert.rejects(walkNames(sn, ['kind=='], ), InvalidArgumentError);
      await assert.rejects(walkNames(sn, ['name==a,']), InvalidArgumentError);
    });

    run('LayerFileUpdate: a file updated in an upper layer (docker#21555)', async (sn, work) => {
      const l1 = fstest.apply(
        fstest.createDir('/etc', 0o700),
        fstest.createFile('/etc/hosts', 'mydomain 10.0.0.1', 0o644),
        fstest.createFile('/etc/profile', 'PATH=/usr/bin', 0o644),
      );
      const l2 = fstest.apply(
        fstest.createFile('/etc/hosts', 'mydomain 10.0.0.2', 0o644),
        fstest.createFile('/etc/profile', 'PATH=/usr/bin', 0o666),
        fstest.createDir('/root', 0o700),
        fstest.createFile('/root/.bashrc', 'PATH=/usr/sbin:/usr/bin', 0o644),
      );
      // Twice, the second time across a second boundary (timestamps must not matter).
      await checkSnapshots(sn, work, l1, l2);
      await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 5));
      await checkSnapshots(sn, work, l1, l2);
    }, { fs: true });

    run('RemoveDirectoryInLowerLayer: a directory replaced in an upper layer (docker#25244)', async (sn, work) => {
      await checkSnapshots(
        sn,
        work,
        fstest.apply(fstest.createDir('/lib', 0o700), fstest.createFile('/lib/hidden', '', 0o644)),
        fstest.apply(fstest.removeAll('/lib'), fstest.createDir('/lib', 0o700), fstest.createFile('/lib/not-hidden', '', 0o644)),
        fstest.apply(fstest.createFile('/lib/newfile', '', 0o644)),
      );
    }, { fs: true });

    run('Chown: ownership changed in an upper layer (docker#20240, #24913, #28391)', async (sn, work) => {
      await checkSnapshots(
        sn,
        work,
        fstest.apply(
          fstest.createDir('/opt', 0o700),
          fstest.createDir('/opt/a', 0o700),
          fstest.createDir('/opt/a/b', 0o700),
          fstest.createFile('/opt/a/b/file.txt', 'hello', 0o644),
        ),
        fstest.apply(fstest.chown('/opt', 1, 1), fstest.chown('/opt/a', 1, 1), fstest.chown('/opt/a/b', 1, 1), fstest.chown('/opt/a/b/file.txt', 1, 1)),
      );
    }, { fs: true });

    run('DirectoryPermissionOnCommit: owners survive commits (docker#27298)', async (sn, work) => {
      await checkSnapshots(
        sn,
        work,
        fstest.apply(
          fstest.createDir('/dir1', 0o700),
          fstest.createDir('/dir2', 0o700),
          fstest.createDir('/dir3', 0o700),
          fstest.createDir('/dir4', 0o700),
          fstest.createFile('/dir4/f1', '...', 0o644),
          fstest.createDir('/dir5', 0o700),
          fstest.createFile('/dir5/f1', '...', 0o644),
          fstest.chown('/dir1', 1, 1),
          fstest.chown('/dir2', 1, 1),
          fstest.chown('/dir3', 1, 1),
          fstest.chown('/dir5', 1, 1),
          fstest.chown('/dir5/f1', 1, 1),
        ),
        fstest.apply(fstest.chown('/dir2', 0, 0), fstest.removeAll('/dir3'), fstest.chown('/dir4', 1, 1), fstest.chown('/dir4/f1', 1, 1)),
        fstest.apply(
          fstest.createDir('/dir3', 0o700),
          fstest.chown('/dir3', 1, 1),
          fstest.removeAll('/dir5'),
          fstest.createDir('/dir5', 0o700),
          fstest.chown('/dir5', 1, 1),
        ),
      );
    }, { fs: true });

    run('RemoveIntermediateSnapshot: a parent cannot be removed before its children', async (sn, work) => {
      const base = await prepareMount(sn, work, { key: 'base', parent: '' });
      await unmount(base);
      const committedBase = join(work, 'committed-base');
      await sn.commit(committedBase, base, opt());
      const intermediate = join(work, 'intermediate');
      await sn.prepare(intermediate, committedBase, opt());
      const committedInter = join(work, 'committed-inter');
      await sn.commit(committedInter, intermediate, opt());
      const top = join(work, 'toplayer');
      await sn.prepare(top, committedInter, opt());
      await assert.rejects(sn.remove(committedInter), FailedPreconditionError);
      await sn.remove(top);
      await sn.remove(committedInter);
      await sn.remove(committedBase);
    }, { fs: true });

    run('DeletedFilesInChildSnapshot: a file deleted in a child stays deleted', async (sn, work) => {
      await checkSnapshots(
        sn,
        work,
        fstest.apply(fstest.createFile('/foo', 'foo\n', 0o777), fstest.createFile('/foobar', 'foobar\n', 0o777)),
        fstest.apply(fstest.removeAll('/foobar')),
        fstest.apply(),
      );
    }, { fs: true });

    run('MoveFileFromLowerLayer: files moved and hard-linked out of a lower layer', async (sn, work) => {
      await checkSnapshots(
        sn,
        work,
        fstest.apply(
          fstest.createDir('/dir1', 0o700),
          fstest.createFile('/dir1/f1', 'Hello', 0o644),
          fstest.createDir('dir2', 0o700),
          fstest.createFile('dir2/f2', '...', 0o644),
        ),
        fstest.apply(
          fstest.createDir('/dir3', 0o700),
          fstest.createFile('/dir3/f1', 'Hello', 0o644),
          fstest.removeAll('/dir1'),
          fstest.link('dir2/f2', 'dir3/f2'),
          fstest.removeAll('dir2/f2'),
        ),
      );
    }, { fs: true });

    run('ViewReadonly: a view mounts read-only', async (sn, work) => {
      const preparing = join(work, 'preparing');
      await sn.prepare(preparing, '', opt());
      const committed = join(work, 'committed');
      await sn.commit(committed, preparing, opt());
      const view = join(work, 'view');
      const m = await sn.view(view, committed, opt());
      const mp = join(work, 'view-mount');
      await mkdir(mp);
      await mountAll(m, mp);
      let err: unknown;
      try {
        await writeFile(join(mp, 'testfile'), 'testcontent');
      } catch (e) {
        err = e;
      } finally {
        await unmount(mp);
      }
      assert.ok(err instanceof Error, 'writing into a view must fail (EROFS)');
      await sn.remove(view);
      await sn.remove(committed);
    }, { fs: true });

    run('StatInWalk: stat works from inside a walk callback', async (sn) => {
      const prefix = 'stats-in-walk-';
      await sn.prepare(`${prefix}c1-a`, '', opt());
      await sn.commit(`${prefix}c1`, `${prefix}c1-a`, opt());
      await sn.prepare(`${prefix}c2-a`, `${prefix}c1`, opt());
      await sn.commit(`${prefix}c2`, `${prefix}c2-a`, opt());
      await sn.prepare(`${prefix}a1`, `${prefix}c2`, opt());
      await sn.view(`${prefix}v1`, `${prefix}c2`, opt());
      let seen = 0;
      await sn.walk(async (si) => {
        if (!si.name.startsWith(prefix)) return;
        checkInfo(si, await sn.stat(si.name));
        seen++;
      });
      assert.equal(seen, 4);
    });

    run('CloseTwice: close is idempotent', async (sn) => {
      await sn.prepare('closeTwice-prepare', '', opt());
      await sn.commit('closeTwice', 'closeTwice-prepare', opt());
      await sn.remove('closeTwice');
      await sn.close();
      await sn.close();
    });

    run('RootPermission: a new root directory has mode 0755', async (sn, work) => {
      const preparing = await prepareMount(sn, work, { key: 'preparing', parent: '' });
      try {
        assert.equal((await lstat(preparing)).mode & 0o777, 0o755);
      } finally {
        await unmount(preparing);
      }
    }, { fs: true });

    run('RootOwner: a child snapshot\'s root keeps the owner of its parent\'s root', async (sn, work) => {
      const base = await createSnapshot(sn, { parent: '', work }, fstest.chown('', 1, 2));
      const child = await prepareMount(sn, work, { key: 'child', parent: base });
      try {
        const st = await lstat(child);
        assert.deepEqual([st.uid, st.gid], [1, 2]);
      } finally {
        await unmount(child);
      }
    }, { fs: true });

    run('Rename: files renamed over lower files (docker#25409)', async (sn, work) => {
      const l2: Applier[] = options.renameLowerDirectories === true ? [fstest.rename('/dir1', '/dir2')] : [];
      l2.push(
        fstest.createFile('/somefiles/f1-overwrite', 'new content 1', 0o644),
        fstest.rename('/somefiles/f1-overwrite', '/somefiles/f1'),
        fstest.rename('/somefiles/f2', '/somefiles/f3'),
      );
      await checkSnapshots(
        sn,
        work,
        fstest.apply(
          fstest.createDir('/dir1', 0o700),
          fstest.createDir('/somefiles', 0o700),
          fstest.createFile('/somefiles/f1', 'was here first!', 0o644),
          fstest.createFile('/somefiles/f2', 'nothing interesting', 0o644),
        ),
        fstest.apply(...l2),
      );
    }, { fs: true });

    const layers = options.manyLayers ?? 128;
    run(`${layers}LayersMount: a chain of ${layers} layers mounts as one tree`, async (sn, work) => {
      const appliers: Applier[] = [
        fstest.apply(
          fstest.createFile('/bottom', 'way at the bottom\n', 0o777),
          fstest.createFile('/overwriteme', 'FIRST!\n', 0o777),
          fstest.createDir('/addhere', 0o755),
          fstest.createDir('/onlyme', 0o755),
          fstest.createFile('/onlyme/bottom', 'bye!\n', 0o777),
        ),
      ];
      for (let i = 1; i < layers; i++) {
        appliers.push(
          fstest.apply(
            fstest.createFile('/overwriteme', `${i} WAS HERE!\n`, 0o777),
            fstest.createFile(`/addhere/file-${i}`, 'same\n', 0o755),
            fstest.removeAll('/onlyme'),
            fstest.createDir('/onlyme', 0o755),
            fstest.createFile(`/onlyme/file-${i}`, 'only me!\n', 0o777),
          ),
        );
      }
      const flat = join(work, 'flat');
      await mkdir(flat);
      let parent = '';
      for (const [i, a] of appliers.entries()) {
        const preparing = join(work, `prepare-layer-${i}`);
        await mkdir(preparing);
        const mounts = await sn.prepare(preparing, parent, opt());
        await mountAll(mounts, preparing);
        try {
          await checkDirectoryEqual(flat, preparing);
          await a(flat);
          await a(preparing);
          await checkDirectoryEqual(flat, preparing);
        } finally {
          await unmount(preparing);
        }
        parent = join(work, `committed-${i}`);
        await sn.commit(parent, preparing, opt());
      }
      const view = join(work, 'fullview');
      await mkdir(view);
      await mountAll(await sn.view(view, parent, opt()), view);
      try {
        await checkDirectoryEqual(flat, view);
      } finally {
        await unmount(view);
      }
    }, { fs: true, timeout: 300_000 });

    // ---- beyond containerd's suite: error codes, usage, commit labels, cleanup --------

    run('errors: NotFound, AlreadyExists, FailedPrecondition and InvalidArgument as containerd returns them', async (sn) => {
      await assert.rejects(sn.stat('missing'), NotFoundError);
      await assert.rejects(sn.mounts('missing'), NotFoundError);
      await assert.rejects(sn.usage('missing'), NotFoundError);
      await assert.rejects(sn.remove('missing'), NotFoundError);
      await assert.rejects(sn.commit('x', 'missing'), NotFoundError);
      await assert.rejects(sn.update({ name: 'missing', parent: '', kind: 'active', created: new Date(), updated: new Date(), labels: {} }), NotFoundError);
      await assert.rejects(sn.prepare('k', 'no-such-parent'), NotFoundError);

      await sn.prepare('active', '');
      await assert.rejects(sn.prepare('child', 'active'), InvalidArgumentError, 'an active parent is not committed');
      await sn.view('view', '');
      await assert.rejects(sn.commit('from-view', 'view'), FailedPreconditionError);
      await sn.prepare('other', '');
      await sn.commit('done', 'other');
      await assert.rejects(sn.commit('done', 'active'), AlreadyExistsError, 'the name is taken');
      await assert.rejects(sn.prepare('done', ''), AlreadyExistsError, 'keys and names share one namespace');
      await assert.rejects(sn.mounts('done'), FailedPreconditionError);
      await sn.prepare('child', 'done');
      await assert.rejects(sn.remove('done'), FailedPreconditionError);
      await assert.rejects(sn.prepare('big', '', { labels: { k: 'v'.repeat(4096) } }), InvalidArgumentError);
      await assert.rejects(sn.stat('big'), NotFoundError, 'a rejected prepare leaves nothing behind');
      assert.deepEqual(await walkNames(sn), ['active', 'child', 'done', 'view']);
    });

    run('commit: labels given at commit replace the active snapshot labels', async (sn) => {
      await sn.prepare('a', '', { labels: { keep: 'no', 'containerd.io/gc.root': 'x' } });
      await sn.commit('c', 'a', { labels: { fresh: 'yes' } });
      assert.deepEqual((await sn.stat('c')).labels, { fresh: 'yes' });
      await sn.prepare('b', 'c', { labels: { mine: '1' } });
      assert.deepEqual((await sn.stat('b')).labels, { mine: '1' }, 'labels are not inherited from the parent');
    });

    run('usage: counts the own layer of an active snapshot and is stored at commit', async (sn, work) => {
      const a = await prepareMount(sn, work, { key: 'a', parent: '' });
      try {
        await writeFile(join(a, 'big'), Buffer.alloc(256 << 10, 1));
        await mkdir(join(a, 'd'));
        await writeFile(join(a, 'd', 'small'), 'x');
        await link(join(a, 'big'), join(a, 'd', 'big-link'));
      } finally {
        await unmount(a);
      }
      const u = await sn.usage(a);
      assert.ok(u.size >= 256 << 10, `size ${u.size}`);
      assert.equal(u.inodes, 4, 'root, big (linked twice), d, small');
      await sn.commit('c', a);
      assert.deepEqual(await sn.usage('c'), u);
      const child = await prepareMount(sn, work, { key: 'child', parent: 'c' });
      try {
        await writeFile(join(child, 'new'), 'y');
      } finally {
        await unmount(child);
      }
      const cu = await sn.usage(child);
      assert.ok(cu.size < u.size, 'a child counts only its own layer');
      assert.equal(cu.inodes, 2);
    }, { fs: true });

    run('mounts: returns the same mounts as prepare and view', async (sn) => {
      const p = await sn.prepare('p', '');
      assert.deepEqual(await sn.mounts('p'), p);
      await sn.commit('c', 'p');
      const a = await sn.prepare('a', 'c');
      assert.deepEqual(await sn.mounts('a'), a);
      const v = await sn.view('v', 'c');
      assert.deepEqual(await sn.mounts('v'), v);
    });

    run('cleanup: succeeds and keeps every live snapshot', async (sn) => {
      await sn.prepare('a', '');
      await sn.commit('c', 'a');
      await sn.prepare('b', 'c');
      await sn.prepare('gone', '');
      await sn.remove('gone');
      await sn.cleanup();
      assert.deepEqual(await walkNames(sn), ['b', 'c']);
      await sn.mounts('b');
    });
  });
}
