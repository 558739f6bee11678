import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileDigest } from './file-digest.ts';

test('fileDigest hashes files across chunk boundaries, and empty files', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'file-digest-'));
  try {
    for (const n of [0, 1, (4 << 20) - 1, 4 << 20, (8 << 20) + 12345]) {
      const data = randomBytes(n);
      const path = join(dir, `f${n}`);
      writeFileSync(path, data);
      assert.deepEqual(await fileDigest(path), { digest: `sha256:${createHash('sha256').update(data).digest('hex')}`, size: n }, `${n} bytes`);
    }
    await assert.rejects(fileDigest(join(dir, 'missing')), { code: 'ENOENT' });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
