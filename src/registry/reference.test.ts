import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidArgumentError } from '../io/errors.ts';
import { formatReference, isRegistryReference, parseReference, parseRepository, registryHost } from './reference.ts';

const D = `sha256:${'ab'.repeat(32)}`;

test('parseReference() normalises Docker Hub names', () => {
  assert.deepEqual(parseReference('alpine'), { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' });
  assert.deepEqual(parseReference('alpine:3.19'), { registry: 'docker.io', repository: 'library/alpine', tag: '3.19' });
  assert.deepEqual(parseReference('user/app'), { registry: 'docker.io', repository: 'user/app', tag: 'latest' });
  assert.deepEqual(parseReference('docker.io/alpine'), { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' });
  assert.deepEqual(parseReference('index.docker.io/library/alpine'), { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' });
});

test('parseReference() recognises registries by dot, port, localhost and IPv6', () => {
  assert.deepEqual(parseReference('ghcr.io/a/b/c:v1'), { registry: 'ghcr.io', repository: 'a/b/c', tag: 'v1' });
  assert.deepEqual(parseReference('localhost/x'), { registry: 'localhost', repository: 'x', tag: 'latest' });
  assert.deepEqual(parseReference('localhost:5000/x:t'), { registry: 'localhost:5000', repository: 'x', tag: 't' });
  assert.deepEqual(parseReference('127.0.0.1:5000/a/b'), { registry: '127.0.0.1:5000', repository: 'a/b', tag: 'latest' });
  assert.deepEqual(parseReference('[::1]:5000/a'), { registry: '[::1]:5000', repository: 'a', tag: 'latest' });
  assert.deepEqual(parseReference('Registry.Example.COM/a'), { registry: 'registry.example.com', repository: 'a', tag: 'latest' });
});

test('parseReference() keeps digests and tags, no implicit latest with a digest', () => {
  assert.deepEqual(parseReference(`example.com/a@${D}`), { registry: 'example.com', repository: 'a', digest: D });
  assert.deepEqual(parseReference(`example.com:443/a:v2@${D}`), { registry: 'example.com:443', repository: 'a', tag: 'v2', digest: D });
});

test('parseReference() rejects malformed references with InvalidArgumentError', () => {
  for (const bad of [
    '',
    'Alpine',
    'a//b',
    'example.com/',
    'example.com/A',
    'a:bad tag',
    `a@sha256:${'z'.repeat(64)}`,
    'a@sha256:abc',
    'example.com:99999/a',
    '-x.com/a',
    `x/${'a'.repeat(260)}`,
    'https://example.com/a',
  ]) {
    assert.throws(() => parseReference(bad), InvalidArgumentError, bad);
  }
});

test('isRegistryReference() says no to local layouts and transports', () => {
  assert.equal(isRegistryReference('oci:/var/lib/img:latest'), false);
  assert.equal(isRegistryReference('oci:dir'), false);
  assert.equal(isRegistryReference('oci-archive:/tmp/x.tar'), false);
  assert.equal(isRegistryReference('docker-archive:/tmp/x.tar:tag'), false);
  assert.equal(isRegistryReference('docker.io/library/alpine'), true);
  assert.throws(() => parseReference('oci:/var/lib/img:latest'), /oci: names a local image/);
});

test('formatReference() round-trips canonical names', () => {
  for (const s of ['docker.io/library/alpine:latest', `127.0.0.1:5000/a/b@${D}`, `ghcr.io/x/y:v1@${D}`]) {
    assert.equal(formatReference(parseReference(s)), s);
  }
});

test('parseRepository() refuses tags and digests; registryHost() maps Docker Hub', () => {
  assert.deepEqual(parseRepository('127.0.0.1:5000/a/b'), { registry: '127.0.0.1:5000', repository: 'a/b' });
  assert.deepEqual(parseRepository('busybox'), { registry: 'docker.io', repository: 'library/busybox' });
  assert.throws(() => parseRepository('a:tag'), InvalidArgumentError);
  assert.throws(() => parseRepository(`a@${D}`), InvalidArgumentError);
  assert.equal(registryHost('docker.io'), 'registry-1.docker.io');
  assert.equal(registryHost('127.0.0.1:5000'), '127.0.0.1:5000');
});
