import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgumentError } from '../io/errors.ts';
import { currentPlatform, formatPlatform, normalizePlatform, parsePlatform, selectManifest } from './platform.ts';

const entry = (digest: string, platform?: { os: string; architecture: string; variant?: string }, annotations?: Record<string, string>) => ({
  digest,
  size: 1,
  ...(platform === undefined ? {} : { platform }),
  ...(annotations === undefined ? {} : { annotations }),
});

test('normalizePlatform() applies the containerd aliases', () => {
  assert.deepEqual(normalizePlatform({ os: 'Linux', architecture: 'x86_64' }), { os: 'linux', architecture: 'amd64' });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'aarch64', variant: 'v8' }), { os: 'linux', architecture: 'arm64' });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'arm' }), { os: 'linux', architecture: 'arm', variant: 'v7' });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'armel' }), { os: 'linux', architecture: 'arm', variant: 'v6' });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'arm', variant: '6' }), { os: 'linux', architecture: 'arm', variant: 'v6' });
  assert.deepEqual(normalizePlatform({ os: 'linux', architecture: 'i386' }), { os: 'linux', architecture: '386' });
});

test('parsePlatform() and formatPlatform() round-trip; bad text is rejected', () => {
  assert.equal(formatPlatform(parsePlatform('linux/arm/v7')), 'linux/arm/v7');
  assert.equal(formatPlatform(parsePlatform('linux/arm64/v8')), 'linux/arm64');
  assert.throws(() => parsePlatform('linux'), InvalidArgumentError);
  assert.throws(() => parsePlatform('linux//v7'), InvalidArgumentError);
  assert.equal(currentPlatform().os, process.platform);
});

test('selectManifest() prefers the exact platform, in index order', () => {
  const idx = [
    entry('a', { os: 'linux', architecture: 'amd64' }),
    entry('b', { os: 'linux', architecture: 'arm64', variant: 'v8' }),
    entry('c', { os: 'linux', architecture: 'arm', variant: 'v6' }),
    entry('d', { os: 'linux', architecture: 'arm', variant: 'v7' }),
    entry('e', { os: 'linux', architecture: 'amd64' }),
  ];
  assert.equal(selectManifest(idx, parsePlatform('linux/amd64'))?.digest, 'a');
  assert.equal(selectManifest(idx, parsePlatform('linux/arm64'))?.digest, 'b');
  assert.equal(selectManifest(idx, parsePlatform('linux/arm/v7'))?.digest, 'd');
  assert.equal(selectManifest(idx, parsePlatform('linux/s390x')), undefined);
  assert.equal(selectManifest(idx, parsePlatform('windows/amd64')), undefined);
});

test('selectManifest() falls back to compatible lower variants, best first', () => {
  const idx = [entry('v5', { os: 'linux', architecture: 'arm', variant: 'v5' }), entry('v6', { os: 'linux', architecture: 'arm', variant: 'v6' })];
  assert.equal(selectManifest(idx, parsePlatform('linux/arm/v7'))?.digest, 'v6');
  assert.equal(selectManifest(idx, parsePlatform('linux/arm/v5'))?.digest, 'v5');
  const amd = [entry('386', { os: 'linux', architecture: '386' }), entry('v2', { os: 'linux', architecture: 'amd64', variant: 'v2' })];
  assert.equal(selectManifest(amd, parsePlatform('linux/amd64/v3'))?.digest, 'v2');
  assert.equal(selectManifest(amd, parsePlatform('linux/amd64'))?.digest, '386');
});

test('selectManifest() never picks attestations, unknown platforms or entries without a platform', () => {
  const idx = [
    entry('none'),
    entry('att', { os: 'linux', architecture: 'amd64' }, { 'vnd.docker.reference.type': 'attestation-manifest' }),
    entry('unk', { os: 'unknown', architecture: 'unknown' }),
  ];
  assert.equal(selectManifest(idx, parsePlatform('linux/amd64')), undefined);
});
