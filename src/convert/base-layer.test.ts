import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { wrapBaseLayer } from './base-layer.ts';
import { TarReader } from './tar-reader.ts';
import { FIXTURES } from '../../test/support/shared.ts';

/** The `ext4_64` file out of upstream's `baselayers/ext4_64.tar.gz`. */
async function upstreamBaseLayer(): Promise<Uint8Array> {
  const tar = new TarReader(Readable.from([gunzipSync(readFileSync(join(FIXTURES, 'ext4_64.tar.gz')))]));
  for (let e = await tar.next(); e !== undefined; e = await tar.next()) {
    if (e.path.replace(/^\.\//, '') !== 'ext4_64') continue;
    const parts: Uint8Array[] = [];
    for await (const c of tar.body()) parts.push(c.slice());
    return Buffer.concat(parts);
  }
  throw new Error('no ext4_64 in the fixture');
}

test('wrapBaseLayer() of upstream ext4_64 is the blob upstream uploads', async () => {
  const raw = await upstreamBaseLayer();
  assert.equal(createHash('sha256').update(raw).digest('hex'), 'c3a417552a6cf9ffa959b541850bab7d7f08f4255425bf8b48c85f7b36b378d9');
  const blob = wrapBaseLayer(raw);
  assert.equal(blob.length, 4739584);
  assert.equal(createHash('sha256').update(blob).digest('hex'), 'a8b5fca80efae55088290f3da8110d7742de55c2a378d5ab53226a483f390e21');
});
