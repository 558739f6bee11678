import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConversionCache, type CachedLayer } from './conversion-cache.ts';

const row = (over: Partial<CachedLayer>): CachedLayer => ({
  host: 'reg.local',
  repo: 'a',
  url: 'http://reg.local/v2/a/blobs',
  chainId: 'sha256:c0',
  recipe: 'r1',
  parentDigest: '',
  digest: 'sha256:d0',
  size: 10,
  ...over,
});

test('ConversionCache stores rows per location, recipe and parent, and survives reopening', () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-cache-'));
  try {
    const path = join(dir, 'sub', 'cache.db');
    let cache = ConversionCache.open(path);
    cache.record(row({}));
    cache.record(row({ repo: 'b', url: 'http://reg.local/v2/b/blobs' }));
    cache.record(row({ recipe: 'r2', digest: 'sha256:other' }));
    cache.record(row({ parentDigest: 'sha256:p', digest: 'sha256:on-p' }));
    cache.record(row({ size: 11 })); // replaces the first row
    cache.close();
    cache = ConversionCache.open(path);
    assert.equal(cache.count(), 4);
    const key = { chainId: 'sha256:c0', recipe: 'r1', parentDigest: '' };
    assert.deepEqual(cache.find(key, { host: 'reg.local', repo: 'b' }).map((r) => r.repo), ['b', 'a']);
    assert.deepEqual(cache.find(key, { host: 'reg.local', repo: 'a' }).map((r) => [r.repo, r.size]), [['a', 11], ['b', 10]]);
    assert.deepEqual(cache.find({ ...key, recipe: 'r2' }).map((r) => r.digest), ['sha256:other']);
    assert.deepEqual(cache.find({ ...key, parentDigest: 'sha256:p' }).map((r) => r.digest), ['sha256:on-p']);
    assert.deepEqual(cache.find({ ...key, parentDigest: 'sha256:q' }), []);
    cache.forget(row({ repo: 'b' }));
    assert.deepEqual(cache.find(key).map((r) => r.repo), ['a']);
    cache.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
