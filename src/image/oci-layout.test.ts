import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { OciLayout, parseOciLayoutRef } from './oci-layout.ts';
import { FIXTURES } from '../../test/support/shared.ts';
import { DataCorruptionError, NotFoundError } from '../io/errors.ts';

test('parseOciLayoutRef() splits directory, tag and digest', () => {
  assert.deepEqual(parseOciLayoutRef('oci:/a/b:tag'), { dir: '/a/b', reference: 'tag' });
  assert.deepEqual(parseOciLayoutRef('oci:rel/dir'), { dir: 'rel/dir', reference: undefined });
  const d = `sha256:${'a'.repeat(64)}`;
  assert.deepEqual(parseOciLayoutRef(`oci:/x:y/z@${d}`), { dir: '/x:y/z', reference: d });
});

test('OciLayout resolves the upstream converted hello-world by name and verifies blobs', async () => {
  const layout = await OciLayout.open(join(FIXTURES, 'hello-world-converted'));
  const desc = await layout.resolve('amd64-converted');
  assert.equal(desc.digest, 'sha256:42caa56a19e082b872d43f645bb392e25c9e78bce429755bd709fac598265f88');
  const manifest = JSON.parse(new TextDecoder().decode(await layout.readBlob(desc.digest))) as { layers: unknown[] };
  assert.equal(manifest.layers.length, 1);
  await assert.rejects(layout.resolve('nope'), NotFoundError);
});

test('OciLayout writes blobs and tags, and rejects a blob whose content changed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-layout-'));
  try {
    const layout = await OciLayout.openOrCreate(join(dir, 'img'));
    const digest = await layout.writeBlob(new TextEncoder().encode('{"a":1}'));
    await layout.tag({ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest, size: 7 }, 'v1');
    const again = await OciLayout.open(join(dir, 'img'));
    assert.equal((await again.resolve('v1')).digest, digest);
    const { writeFileSync } = await import('node:fs');
    writeFileSync(again.blobPath(digest), '{"a":2}');
    await assert.rejects(again.readBlob(digest), DataCorruptionError);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
