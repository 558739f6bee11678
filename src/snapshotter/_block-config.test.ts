import { test } from 'node:test';
import assert from 'node:assert/strict';
import { repoBlobUrl } from './_block-config.ts';
import { InvalidArgumentError } from '../io/errors.ts';

test('repoBlobUrl() follows containerd\'s parser without Docker Hub normalisation', () => {
  assert.equal(repoBlobUrl('docker.io/overlaybd/redis:6.2.1_obd'), 'https://registry-1.docker.io/v2/overlaybd/redis/blobs');
  assert.equal(repoBlobUrl('registry.hub.docker.com/overlaybd/redis:6.2.1_obdconv'), 'https://registry.hub.docker.com/v2/overlaybd/redis/blobs');
  assert.equal(repoBlobUrl(`localhost:5000/a/b/c@sha256:${'0'.repeat(64)}`), 'https://localhost:5000/v2/a/b/c/blobs');
  assert.equal(repoBlobUrl('localhost:5000/a:tag@sha256:x'), 'https://localhost:5000/v2/a/blobs');
  assert.equal(repoBlobUrl('localhost:5000/a', [{ host: 'localhost:5000', insecure: true }]), 'http://localhost:5000/v2/a/blobs');
  assert.equal(repoBlobUrl('localhost:5000/a', [{ host: 'localhost:5000', insecure: false }]), 'https://localhost:5000/v2/a/blobs');
  assert.throws(() => repoBlobUrl('redis:6'), InvalidArgumentError);
  assert.throws(() => repoBlobUrl('host/'), InvalidArgumentError);
});
