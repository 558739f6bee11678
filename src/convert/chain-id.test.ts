import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { chainIds, layerUuid } from './chain-id.ts';
import { openFileReader } from '../io/file-reader.ts';
import { openLayerBlob } from '../formats/open-layer-blob.ts';
import { openRoLayer } from '../formats/lsmt/ro-layer.ts';
import { FIXTURES } from '../../test/support/shared.ts';

const A = `sha256:${'a'.repeat(64)}`;
const B = `sha256:${'b'.repeat(64)}`;

test('chainIds() follows the OCI definition', () => {
  const c1 = `sha256:${createHash('sha256').update(`${A} ${B}`).digest('hex')}`;
  const c2 = `sha256:${createHash('sha256').update(`${c1} ${A}`).digest('hex')}`;
  assert.deepEqual(chainIds([A, B, A]), [A, c1, c2]);
  assert.deepEqual(chainIds([]), []);
  assert.throws(() => chainIds([A, 'sha256:xyz']), /diff_ids\[1\]/);
});

test("layerUuid() is the UUID upstream stamped into the converted hello-world layer", async () => {
  const blob = join(FIXTURES, 'hello-world-converted', 'blobs', 'sha256', '022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d');
  const { reader } = await openLayerBlob(await openFileReader(blob));
  try {
    const layer = await openRoLayer(reader);
    const uuid = layerUuid(chainIds(['sha256:01bb4fce3eb1b56b05adf99504dafd31907a5aadac736e36b27595c8b92f07f1'])[0] as string);
    assert.equal(uuid, '01bb4fce-3eb1-b56b-05ad-f99504dafd31');
    assert.equal(layer.uuid.toLowerCase(), uuid);
  } finally {
    await reader.close();
  }
});
