import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import type { BlobReader } from '../io/blob-reader.ts';
import { MemoryReader } from '../io/memory-reader.ts';
import { DataCorruptionError } from '../io/errors.ts';
import { FIXTURES, sha256, vector } from '../../test/support/shared.ts';
import { openLayerBlob } from './open-layer-blob.ts';
import { wrapBytes } from './tar/wrapper.ts';

const HELLO = `${FIXTURES}/hello-world-converted/blobs/sha256/022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d`;

class TrackingReader extends MemoryReader {
  closes = 0;
  override async close(): Promise<void> {
    this.closes++;
    await super.close();
  }
}

function file(path: string): Uint8Array {
  return new Uint8Array(readFileSync(path));
}

async function readAll(r: BlobReader): Promise<Uint8Array> {
  const out = new Uint8Array(r.size);
  assert.equal(await r.readAt(out, 0), r.size);
  return out;
}

test('openLayerBlob() unwraps tar and ZFile in every combination', async () => {
  const l1 = file(vector('lsmt', 'L1.commit'));
  const lz4 = file(vector('lsmt', 'L1.lz4.commit'));
  const cases: [string, Uint8Array, boolean, boolean][] = [
    ['plain LSMT', l1, false, false],
    ['ZFile', lz4, false, true],
    ['tar(ZFile) from overlaybd-commit -z -t', file(vector('lsmt', 'L1.lz4.commit.tar')), true, true],
    ['tar(plain LSMT)', wrapBytes(l1), true, false],
  ];
  for (const [label, bytes, wrapped, compressed] of cases) {
    const src = new TrackingReader(bytes);
    const opened = await openLayerBlob(src);
    assert.equal(opened.wrapped, wrapped, label);
    assert.equal(opened.zfile !== null, compressed, label);
    if (opened.zfile !== null) assert.equal(opened.zfile, opened.reader, label);
    assert.equal(sha256(await readAll(opened.reader)), sha256(l1), label);
    await opened.reader.close();
    assert.equal(src.closes, 1, `${label}: closing the result closes the source`);
  }
});

test('openLayerBlob() opens the hello-world layer and the unwrapped legacy base layer', async () => {
  const hello = await openLayerBlob(new MemoryReader(file(HELLO)));
  assert.equal(hello.wrapped, true);
  assert.equal(hello.reader.size, 71528448);
  assert.equal(hello.zfile?.info.indexSize, 17463);

  const tar = gunzipSync(readFileSync(vector('apply', 'ext4_64.tar.gz')));
  const ext4 = new Uint8Array(tar.buffer, tar.byteOffset + 512, 4737695);
  const base = await openLayerBlob(new MemoryReader(ext4));
  assert.equal(base.wrapped, false);
  assert.equal(base.reader.size, 541937664);
});

test('openLayerBlob() leaves the source open when the ZFile inside is corrupt', async () => {
  const bad = file(vector('lsmt', 'L1.lz4.commit'));
  bad[100]! ^= 1; // inside the digest-covered header
  const src = new TrackingReader(bad);
  await assert.rejects(openLayerBlob(src), DataCorruptionError);
  assert.equal(src.closes, 0);
});
