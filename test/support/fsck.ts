/**
 * `e2fsck -fn` as a test assertion. The upstream hello-world image carries one known
 * finding of upstream's mkfs (see test/export-ext4.test.ts): /lost+found has the htree
 * flag with a root that references only block 1 of its 3 blocks.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

export const HELLO_WORLD_FSCK_QUIRK: RegExp[] = [
  /^Problem in HTREE directory inode 11: block #2 not referenced$/,
  /^Invalid HTREE directory inode 11 \(\/lost\+found\)\.  Clear HTree index\? no$/,
];

/** e2fsck -fn: clean, or (exit 4) with no finding other than `allowed`. */
export function assertFsckClean(raw: string, allowed: RegExp[] = []): void {
  const fsck = spawnSync('e2fsck', ['-fn', raw], { encoding: 'utf8' });
  const out = `${fsck.stdout}${fsck.stderr}`;
  if (fsck.status === 0) return;
  const findings = out
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !/^(Pass \d|e2fsck |.*: \d+\/\d+ files|\S+: \*+ WARNING)/.test(l) && !/^$/.test(l));
  const unexpected = findings.filter((l) => !allowed.some((re) => re.test(l)));
  assert.ok(fsck.status === 4 && allowed.length > 0, `e2fsck -fn exited ${fsck.status}:\n${out}`);
  assert.deepEqual(unexpected, [], `e2fsck -fn found more than the known quirk:\n${out}`);
}

