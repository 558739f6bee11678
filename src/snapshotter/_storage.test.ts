import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { classifyStorage } from './_storage.ts';
import { LABELS } from './labels.ts';
import { LSMT_MAGIC0, LSMT_MAGIC1 } from '../formats/lsmt/header-trailer.ts';
import { ZFILE_MAGIC0, ZFILE_MAGIC1 } from '../formats/zfile/header.ts';

test('classifyStorage() follows upstream\'s order: labels, overlaybd files by magic, layer.tar, config', async () => {
  const sn = await mkdtemp(join(tmpdir(), 'obd-classify-'));
  try {
    await mkdir(join(sn, 'fs'));
    await mkdir(join(sn, 'block'));
    const remote = { [LABELS.targetRef]: 'c', [LABELS.blobSize]: '1', [LABELS.blobDigest]: 'd', [LABELS.criImageRef]: 'r' };
    assert.equal(await classifyStorage(sn, remote), 'remote-block');
    const { [LABELS.criImageRef]: _ref, ...noRef } = remote;
    assert.equal(await classifyStorage(sn, noRef), 'normal', 'no image reference: not remote');
    assert.equal(await classifyStorage(sn, {}), 'normal');
    await writeFile(join(sn, 'block', 'config.v1.json'), '{}');
    assert.equal(await classifyStorage(sn, {}), 'remote-block');
    await writeFile(join(sn, 'layer.tar'), 'x');
    assert.equal(await classifyStorage(sn, {}), 'local-layer');
    await writeFile(join(sn, 'fs', 'overlaybd.commit'), '');
    assert.equal(await classifyStorage(sn, {}), 'local-layer', 'an empty file is skipped');
    await writeFile(join(sn, 'block', 'writable_data'), Buffer.concat([LSMT_MAGIC0, LSMT_MAGIC1]));
    assert.equal(await classifyStorage(sn, {}), 'local-block');
    await writeFile(join(sn, 'fs', 'overlaybd.sealed'), 'not an overlaybd file at all, really');
    assert.equal(await classifyStorage(sn, {}), 'normal', 'the first readable file decides');
    await writeFile(join(sn, 'fs', 'overlaybd.commit'), Buffer.concat([ZFILE_MAGIC0, ZFILE_MAGIC1]));
    assert.equal(await classifyStorage(sn, {}), 'local-block');
    await writeFile(join(sn, 'fs', 'overlaybd.commit'), Buffer.concat([ZFILE_MAGIC0, ZFILE_MAGIC1]).subarray(0, 23));
    assert.equal(await classifyStorage(sn, {}), 'normal', 'fewer than 24 bytes');
    await rm(join(sn, 'fs', 'overlaybd.commit'));
    await rm(join(sn, 'fs', 'overlaybd.sealed'));
    await mkdir(join(sn, 'elsewhere'));
    await writeFile(join(sn, 'elsewhere', 'writable_data'), 'plain');
    assert.equal(await classifyStorage(sn, { [LABELS.activePath]: join(sn, 'elsewhere') }), 'normal', 'overlay.active.path moves writable_data');
  } finally {
    await rm(sn, { recursive: true, force: true });
  }
});
