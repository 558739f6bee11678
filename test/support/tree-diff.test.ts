import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, cpSync, linkSync, lutimesSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, unlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { diffTrees } from './tree-diff.ts';

/** Two identical trees, then one change at a time: each is reported. */
test('diffTrees() reports the first difference of every kind it compares', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-treediff-'));
  try {
    const a = join(dir, 'a');
    mkdirSync(join(a, 'd'), { recursive: true });
    writeFileSync(join(a, 'd', 'f'), 'content');
    linkSync(join(a, 'd', 'f'), join(a, 'hard'));
    writeFileSync(join(a, 'g'), 'other');
    symlinkSync('d/f', join(a, 'ln'));
    lutimesSync(join(a, 'ln'), 2000, 2000);
    utimesSync(join(a, 'd'), 1000, 1000);
    const fresh = (): string => {
      const b = join(dir, 'b');
      rmSync(b, { recursive: true, force: true });
      cpSync(a, b, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
      unlinkSync(join(b, 'hard'));
      linkSync(join(b, 'd', 'f'), join(b, 'hard'));
      lutimesSync(join(b, 'ln'), 2000, 2000);
      utimesSync(join(b, 'd'), 1000, 1000);
      return b;
    };
    assert.equal(await diffTrees(a, fresh()), undefined);
    const cases: Array<[(b: string) => void, RegExp]> = [
      [(b) => writeFileSync(join(b, 'g'), 'othe!'), /^g: sha256 differs/],
      [(b) => chmodSync(join(b, 'g'), 0o4755), /^g: mode differs: expected 0644, got 04755/],
      [(b) => chownSync(join(b, 'g'), 5, 0), /^g: uid differs/],
      [(b) => utimesSync(join(b, 'g'), 5, 5), /^g: mtimeMs differs/],
      [(b) => utimesSync(join(b, 'd'), 5, 5), /^d: mtimeMs differs/],
      [(b) => (unlinkSync(join(b, 'ln')), symlinkSync('g', join(b, 'ln')), lutimesSync(join(b, 'ln'), 2000, 2000)), /^ln: link differs/],
      [(b) => spawnSync('setfattr', ['-n', 'user.x', '-v', '1', join(b, 'g')]), /^g: xattrs differs/],
      [(b) => (unlinkSync(join(b, 'hard')), writeFileSync(join(b, 'hard'), 'content')), /^d\/f: hardlinks differs/],
      [(b) => writeFileSync(join(b, 'new'), ''), /^new: unexpected file/],
      [(b) => unlinkSync(join(b, 'g')), /^g: missing file/],
    ];
    for (const [change, re] of cases) {
      const b = fresh();
      change(b);
      assert.match((await diffTrees(a, b)) ?? 'no difference', re);
    }
    const b = fresh();
    utimesSync(join(b, 'd'), 5, 5);
    assert.equal(await diffTrees(a, b, { dirTimes: false }), undefined);
    // dirTimesBefore: only directories whose expected mtime is earlier are compared.
    assert.equal(await diffTrees(a, b, { dirTimesBefore: 1_000_000 }), undefined);
    assert.match((await diffTrees(a, b, { dirTimesBefore: 1_000_001 })) ?? 'no difference', /^d: mtimeMs differs/);
    utimesSync(join(b, 'g'), 5, 5);
    assert.match((await diffTrees(a, b, { dirTimesBefore: 0 })) ?? 'no difference', /^g: mtimeMs differs/, 'file times are always compared');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
