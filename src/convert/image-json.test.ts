import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { configDiffIds, convertImageConfig, goJson, marshalIndex, marshalManifest } from './image-json.ts';
import { DataCorruptionError } from '../io/errors.ts';
import { FIXTURES } from '../../test/support/shared.ts';
import type { Index, Manifest } from '../image/descriptor.ts';

const SRC = join(FIXTURES, 'hello-world-oci', 'blobs', 'sha256');
const CONVERTED = join(FIXTURES, 'hello-world-converted', 'blobs', 'sha256');
const dec = new TextDecoder();
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

test('convertImageConfig() reproduces upstream converted hello-world config byte for byte', () => {
  const source = JSON.parse(readFileSync(join(SRC, '9c7a54a9a43cca047013b82af109fe963fde787f63f9e016fdc3384500c2823d'), 'utf8')) as unknown;
  const out = convertImageConfig(source, ['sha256:022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d']);
  const upstream = readFileSync(join(CONVERTED, 'b67b1f1224de620e9a932ab7ff0e819d7dd9d236605dd8027e5ecf2df650e65e'));
  assert.equal(dec.decode(out), upstream.toString());
  assert.equal(sha(out), 'b67b1f1224de620e9a932ab7ff0e819d7dd9d236605dd8027e5ecf2df650e65e');
  assert.deepEqual(configDiffIds(source), ['sha256:01bb4fce3eb1b56b05adf99504dafd31907a5aadac736e36b27595c8b92f07f1']);
});

test('marshalManifest() reproduces upstream converted hello-world manifest byte for byte', () => {
  const upstream = readFileSync(join(CONVERTED, '42caa56a19e082b872d43f645bb392e25c9e78bce429755bd709fac598265f88'));
  const parsed = JSON.parse(upstream.toString()) as Manifest;
  // Rebuild from parts in a different key order: the output order is Go's, not the input's.
  const layer = parsed.layers[0] as Manifest['layers'][number];
  const shuffled: Manifest = {
    layers: [{ annotations: { ...layer.annotations }, size: layer.size, digest: layer.digest, mediaType: layer.mediaType }],
    config: { size: parsed.config.size, digest: parsed.config.digest, mediaType: parsed.config.mediaType },
    mediaType: parsed.mediaType as string,
    schemaVersion: 2,
  };
  assert.equal(dec.decode(marshalManifest(shuffled)), upstream.toString());
});

test('marshalIndex() re-encodes a docker manifest list in Go field order', () => {
  const list = JSON.parse(readFileSync(join(SRC, '726023f73a8fc5103fa6776d48090539042cb822531c6b751b1f6dd18cb5705d'), 'utf8')) as Index;
  const text = dec.decode(marshalIndex(list));
  assert.ok(text.startsWith('{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":'));
  assert.match(text, /"platform":\{"architecture":"arm","os":"linux","variant":"v5"\}\}/);
  assert.deepEqual(JSON.parse(text), { ...list, manifests: list.manifests.map((m) => ({ mediaType: m.mediaType, digest: m.digest, size: m.size, platform: m.platform })) });
});

test('Go JSON rules: HTML escapes, sorted map keys, omitempty, times, unknown fields dropped', () => {
  const source = {
    created: '2024-01-02T03:04:05.120000000+00:00',
    architecture: 'amd64',
    os: 'linux',
    variant: '',
    container_config: { Hostname: 'x' },
    config: {
      Env: ['A=<b>&c', 'U=\u2028'],
      Entrypoint: [],
      Cmd: null,
      ExposedPorts: { '80/tcp': {}, '443/tcp': { ignored: true } },
      Labels: { b: '2', a: '1', '10': 'ten', '9': 'nine' },
      ArgsEscaped: false,
      Image: 'sha256:dropped',
    },
    rootfs: { type: 'layers', diff_ids: ['sha256:old'] },
    history: [{ created: '2024-01-02T03:04:05+02:00', created_by: 'x', empty_layer: false }, {}],
  };
  const text = dec.decode(convertImageConfig(source, ['sha256:new']));
  assert.equal(
    text,
    '{"created":"2024-01-02T03:04:05.12Z","architecture":"amd64","os":"linux","config":{"ExposedPorts":{"443/tcp":{},"80/tcp":{}},' +
      '"Env":["A=\\u003cb\\u003e\\u0026c","U=\\u2028"],"Labels":{"10":"ten","9":"nine","a":"1","b":"2"}},' +
      '"rootfs":{"type":"layers","diff_ids":["sha256:new"]},"history":[{"created":"2024-01-02T03:04:05+02:00","created_by":"x"},{}]}',
  );
  assert.equal(goJson(new Map([['k', ['\n\t"\\', 1, true, null]]])), '{"k":["\\n\\t\\"\\\\",1,true,null]}');
});

test('convertImageConfig() rejects wrongly typed fields like Go decoding would', () => {
  const base = { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } };
  assert.throws(() => convertImageConfig({ ...base, config: { Cmd: 'sh' } }, []), (e: unknown) => e instanceof DataCorruptionError && /config\.Cmd is not an array/.test(e.message));
  assert.throws(() => convertImageConfig({ ...base, created: 'yesterday' }, []), /created is not an RFC 3339 time/);
  assert.throws(() => convertImageConfig([], []), /the config is not an object/);
  assert.throws(() => configDiffIds({ rootfs: { diff_ids: 'x' } }), /rootfs\.diff_ids is not an array/);
});
