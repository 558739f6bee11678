/**
 * RegistryClient against a real registry (Debian's docker-registry 2.8) in each auth
 * mode: open, htpasswd Basic, and Bearer tokens from the test token server.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DataCorruptionError, InvalidArgumentError, NotFoundError } from '../io/errors.ts';
import { startRegistry } from '../../test/support/registry.ts';
import type { RegistryAuthMode, TestRegistry } from '../../test/support/registry.ts';
import { xs } from '../../test/support/generators.ts';
import { RegistryClient } from './client.ts';
import { credJsonCredentials, dockerConfigCredentials, staticCredentials } from './credentials.ts';
import { digestOf } from './digest.ts';
import { PermissionDeniedError, registryErrorOf } from './errors.ts';
import { REQUEST_CHANNEL } from './instrumentation.ts';
import type { RegistryRequestEvent } from './instrumentation.ts';
import { MANIFEST_MEDIA_TYPES } from './media-types.ts';
import { parsePlatform } from './platform.ts';
import type { Repository } from './reference.ts';

const events: RegistryRequestEvent[] = [];
const listener = (e: unknown): void => {
  events.push(e as RegistryRequestEvent);
};
before(() => subscribe(REQUEST_CHANNEL, listener));
after(() => unsubscribe(REQUEST_CHANNEL, listener));

const enc = new TextEncoder();
const json = (v: unknown): Uint8Array => enc.encode(JSON.stringify(v));
const BLOB = xs(3 * 1024 * 1024 + 4096, 7); // 3 MiB + a bit: several PATCH chunks

async function readAll(s: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of s) parts.push(c);
  return Buffer.concat(parts);
}

function streamOf(bytes: Uint8Array, piece = 100_000): ReadableStream<Uint8Array> {
  let off = 0;
  return new ReadableStream({
    pull(c) {
      if (off >= bytes.length) c.close();
      else {
        c.enqueue(bytes.slice(off, off + piece));
        off += piece;
      }
    },
  });
}

function imageManifest(config: { digest: string; size: number }, layer: { digest: string; size: number }): Uint8Array {
  return json({
    schemaVersion: 2,
    mediaType: MANIFEST_MEDIA_TYPES.ociManifest,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...layer }],
  });
}

function clientFor(reg: TestRegistry, extra: ConstructorParameters<typeof RegistryClient>[0] = {}): RegistryClient {
  return new RegistryClient({
    plainHttp: [reg.host],
    credentials: staticCredentials({ [reg.host]: { username: reg.username, password: reg.password } }),
    retry: { baseDelayMs: 5 },
    ...extra,
  });
}

for (const mode of ['none', 'basic', 'token'] as RegistryAuthMode[]) {
  describe(`RegistryClient against docker-registry, auth ${mode}`, () => {
    let reg: TestRegistry;
    let client: RegistryClient;
    let repo: Repository;
    let blobDigest: string;

    before(async () => {
      reg = await startRegistry({ auth: mode });
      client = clientFor(reg);
      repo = { registry: reg.host, repository: 'obd/app' };
    });
    after(async () => {
      await client?.close();
      await reg?.stop();
    });

    test('pushBlob() uploads a Uint8Array with POST + PUT, then skips it by HEAD', async () => {
      events.length = 0;
      const pushed = await client.pushBlob(repo, BLOB);
      blobDigest = digestOf(BLOB);
      assert.deepEqual(pushed, { digest: blobDigest, size: BLOB.length, status: 'uploaded' });
      const wire = events.filter((e) => e.url.startsWith(`http://${reg.host}/v2/obd/`)).map((e) => `${e.method} ${e.status}`);
      assert.deepEqual(wire.slice(-3), ['HEAD 404', 'POST 202', 'PUT 201']);
      assert.equal((await client.pushBlob(repo, BLOB)).status, 'exists');
    });

    test('pushBlob() uploads a stream in PATCH chunks and hashes it on the way', async () => {
      const data = xs(2 * 1024 * 1024 + 12, 99);
      events.length = 0;
      const pushed = await client.pushBlob({ registry: reg.host, repository: 'obd/chunked' }, streamOf(data), { chunkSize: 512 * 1024 });
      assert.deepEqual(pushed, { digest: digestOf(data), size: data.length, status: 'uploaded' });
      assert.equal(events.filter((e) => e.method === 'PATCH' && e.status === 202).length, 5);
      assert.deepEqual(await readAll(await client.getBlob({ registry: reg.host, repository: 'obd/chunked' }, pushed.digest, { size: data.length })), Buffer.from(data));
    });

    test('pushBlob() refuses a stream whose digest is not the announced one', async () => {
      const data = enc.encode('some bytes');
      await assert.rejects(
        client.pushBlob({ registry: reg.host, repository: 'obd/chunked' }, streamOf(data), { digest: digestOf(enc.encode('other')) }),
        (e: unknown) => e instanceof InvalidArgumentError && /content hashes to/.test(e.message),
      );
      await assert.rejects(client.pushBlob(repo, data, { digest: digestOf(enc.encode('other')) }), InvalidArgumentError);
    });

    test('pushBlob() mounts a blob from another repository without sending it', async () => {
      events.length = 0;
      const target = { registry: reg.host, repository: 'obd/mounted' };
      const res = await client.pushBlob(target, streamOf(BLOB), { digest: blobDigest, mountFrom: ['obd/missing', 'obd/app'] });
      assert.deepEqual(res, { digest: blobDigest, size: BLOB.length, status: 'mounted' });
      assert.equal(events.filter((e) => e.method === 'PUT' || e.method === 'PATCH').length, 0);
      assert.equal((await client.headBlob(target, blobDigest))?.size, BLOB.length);
    });

    test('pushManifest() by tag and by digest; getManifest() and headManifest() read them back', async () => {
      const config = json({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [blobDigest] } });
      const cfg = await client.pushBlob(repo, config);
      const manifest = imageManifest(cfg, { digest: blobDigest, size: BLOB.length });
      const byTag = await client.pushManifest({ ...repo, tag: 'v1' }, { bytes: manifest });
      assert.equal(byTag.digest, digestOf(manifest));
      const byDigest = await client.pushManifest({ ...repo, digest: digestOf(manifest) }, { bytes: manifest, mediaType: MANIFEST_MEDIA_TYPES.ociManifest });
      assert.equal(byDigest.digest, byTag.digest);
      for (const ref of [`${reg.host}/obd/app:v1`, `${reg.host}/obd/app@${byTag.digest}`]) {
        const got = await client.getManifest(ref);
        assert.deepEqual(got, { bytes: got.bytes, mediaType: MANIFEST_MEDIA_TYPES.ociManifest, digest: byTag.digest, size: manifest.length });
        assert.deepEqual(Buffer.from(got.bytes), Buffer.from(manifest));
      }
      assert.deepEqual(await client.headManifest(`${reg.host}/obd/app:v1`), { digest: byTag.digest, size: manifest.length, mediaType: MANIFEST_MEDIA_TYPES.ociManifest });
      assert.equal(await client.headManifest(`${reg.host}/obd/app:nope`), undefined);
      await assert.rejects(client.pushManifest({ ...repo, digest: digestOf(config) }, { bytes: manifest }), InvalidArgumentError);
    });

    test('resolveImage() picks the manifest for the platform from an index', async () => {
      const cfg = await client.pushBlob(repo, json({ os: 'linux', architecture: 'arm64' }));
      const arm = imageManifest(cfg, { digest: blobDigest, size: BLOB.length });
      const amd = imageManifest({ digest: cfg.digest, size: cfg.size }, { digest: blobDigest, size: BLOB.length }).slice();
      amd[amd.length - 1] = 0x7d; // same JSON, distinct bytes below
      const amdBytes = json({ ...JSON.parse(new TextDecoder().decode(amd)), annotations: { arch: 'amd64' } });
      const armPushed = await client.pushManifest({ ...repo, digest: digestOf(arm) }, { bytes: arm });
      const amdPushed = await client.pushManifest({ ...repo, digest: digestOf(amdBytes) }, { bytes: amdBytes });
      const index = json({
        schemaVersion: 2,
        mediaType: MANIFEST_MEDIA_TYPES.ociIndex,
        manifests: [
          { mediaType: MANIFEST_MEDIA_TYPES.ociManifest, digest: amdPushed.digest, size: amdPushed.size, platform: { os: 'linux', architecture: 'amd64' } },
          { mediaType: MANIFEST_MEDIA_TYPES.ociManifest, digest: armPushed.digest, size: armPushed.size, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
          {
            mediaType: MANIFEST_MEDIA_TYPES.ociManifest,
            digest: amdPushed.digest,
            size: amdPushed.size,
            platform: { os: 'unknown', architecture: 'unknown' },
            annotations: { 'vnd.docker.reference.type': 'attestation-manifest' },
          },
        ],
      });
      await client.pushManifest({ ...repo, tag: 'multi' }, { bytes: index });
      const ref = `${reg.host}/obd/app:multi`;
      const a = await client.resolveImage(ref, { platform: parsePlatform('linux/arm64') });
      assert.equal(a.manifest.digest, armPushed.digest);
      assert.equal(a.index?.digest, digestOf(index));
      assert.equal(a.descriptor?.digest, armPushed.digest);
      assert.equal((await client.resolveImage(ref, { platform: parsePlatform('linux/amd64') })).manifest.digest, amdPushed.digest);
      await assert.rejects(client.resolveImage(ref, { platform: parsePlatform('linux/s390x') }), (e: unknown) => e instanceof NotFoundError && /offers linux\/amd64, linux\/arm64\/v8/.test(e.message));
      const single = await client.resolveImage(`${reg.host}/obd/app:v1`);
      assert.equal(single.index, undefined);
    });

    test('headBlob() gives the size; unknown blobs are undefined', async () => {
      assert.deepEqual(await client.headBlob(repo, blobDigest), { digest: blobDigest, size: BLOB.length, mediaType: 'application/octet-stream' });
      assert.equal(await client.headBlob(repo, digestOf(enc.encode('absent'))), undefined);
    });

    test('getBlobRange() returns the exact bytes, one request per read once resolved', async () => {
      await client.getBlobRange(repo, blobDigest, { offset: 0, length: 1 });
      const cases = [
        [0, 4096],
        [1, 1],
        [BLOB.length - 1, 1],
        [123_457, 1_000_003],
        [BLOB.length - 70_000, 70_000],
        [2 * 1024 * 1024, 0],
      ] as const;
      for (const [offset, length] of cases) {
        events.length = 0;
        const got = await client.getBlobRange(repo, blobDigest, { offset, length, blobSize: BLOB.length });
        assert.deepEqual(Buffer.from(got), Buffer.from(BLOB.subarray(offset, offset + length)), `range ${offset}+${length}`);
        assert.equal(events.length, length === 0 ? 0 : 1);
        if (length > 0) assert.equal(events[0]?.status, 206);
      }
      await assert.rejects(client.getBlobRange(repo, blobDigest, { offset: BLOB.length, length: 1, blobSize: BLOB.length }), RangeError);
      await assert.rejects(client.getBlobRange(repo, blobDigest, { offset: 0, length: 10, blobSize: BLOB.length + 1 }), DataCorruptionError);
    });

    test('getBlob() streams the blob and verifies digest and size', async () => {
      assert.deepEqual(await readAll(await client.getBlob(repo, blobDigest, { size: BLOB.length })), Buffer.from(BLOB));
      await assert.rejects(client.getBlob(repo, blobDigest, { size: BLOB.length - 1 }), DataCorruptionError);
    });

    test('a missing manifest or blob is a NotFoundError carrying the registry error', async () => {
      await assert.rejects(client.getManifest(`${reg.host}/obd/app:missing`), (e: unknown) => {
        assert.ok(e instanceof NotFoundError);
        const reg2 = registryErrorOf(e);
        assert.equal(reg2?.status, 404);
        assert.equal(reg2?.errors[0]?.code, 'MANIFEST_UNKNOWN');
        assert.equal(reg2?.method, 'GET');
        assert.match(e.message, /^Cannot get manifest .*obd\/app:missing: registry answered 404 MANIFEST_UNKNOWN/);
        return true;
      });
      const absent = digestOf(enc.encode('nothing'));
      await assert.rejects(client.getBlobRange(repo, absent, { offset: 0, length: 10 }), (e: unknown) => e instanceof NotFoundError && registryErrorOf(e)?.errors[0]?.code === 'BLOB_UNKNOWN');
      await assert.rejects(client.getBlob({ registry: reg.host, repository: 'obd/nothing-here' }, absent), NotFoundError);
    });

    if (mode !== 'none') {
      test('wrong or missing credentials are a PermissionDeniedError', async () => {
        const wrong = clientFor(reg, { credentials: staticCredentials({ [reg.host]: { username: reg.username, password: 'wrong' } }) });
        const anonymous = clientFor(reg, { credentials: staticCredentials({}) });
        for (const c of [wrong, anonymous]) {
          await assert.rejects(c.getManifest(`${reg.host}/obd/app:v1`), PermissionDeniedError);
          await c.close();
        }
      });

      test('credentials come from cred.json and docker config.json', async () => {
        const dir = mkdtempSync(join(tmpdir(), 'obd-client-creds-'));
        try {
          const credPath = join(dir, 'cred.json');
          writeFileSync(credPath, JSON.stringify({ auths: { 'elsewhere:1': { username: 'x', password: 'y' }, [`${reg.host}/obd`]: { auth: Buffer.from(`${reg.username}:${reg.password}`).toString('base64') } } }));
          const viaCred = clientFor(reg, { credentials: credJsonCredentials(credPath) });
          assert.equal((await viaCred.getManifest(`${reg.host}/obd/app:v1`)).mediaType, MANIFEST_MEDIA_TYPES.ociManifest);
          await viaCred.close();

          writeFileSync(join(dir, 'config.json'), JSON.stringify({ auths: { [`http://${reg.host}`]: { username: reg.username, password: reg.password } } }));
          const viaDocker = clientFor(reg, { credentials: dockerConfigCredentials({ env: { DOCKER_CONFIG: dir } }) });
          assert.equal((await viaDocker.headBlob(repo, blobDigest))?.size, BLOB.length);
          await viaDocker.close();
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      });
    }

    test('a new client sends its first request at once (no ping) and authenticates only when refused', async () => {
      const fresh = clientFor(reg);
      events.length = 0;
      await fresh.getManifest(`${reg.host}/obd/app:v1`);
      const wire = events.filter((e) => e.url.startsWith(`http://${reg.host}/v2/`) && e.url.includes('/v2/'));
      assert.equal(wire.some((e) => new URL(e.url).pathname === '/v2/'), false, 'no ping');
      const manifests = wire.filter((e) => e.url.includes('/manifests/')).map((e) => [e.status, e.authorized]);
      assert.deepEqual(manifests, mode === 'none' ? [[200, false]] : [[401, false], [200, true]]);
      await fresh.close();
    });

    if (mode === 'token') {
      test('a token the registry refuses is refreshed once on 401', async () => {
        const ts = reg.tokenServer;
        assert.ok(ts !== undefined);
        const c = clientFor(reg);
        ts.issueExpired(1);
        const before = ts.issued.length;
        events.length = 0;
        await c.getManifest(`${reg.host}/obd/app:v1`);
        assert.equal(ts.issued.length - before, 2);
        assert.deepEqual(
          events.filter((e) => e.url.includes('/manifests/')).map((e) => [e.status, e.authorized]),
          [
            // A new client's first request goes out without credentials (it is its ping).
            [401, false],
            [401, true],
            [200, true],
          ],
        );
        await c.close();
        ts.issueExpired(1000);
        const stuck = clientFor(reg);
        try {
          events.length = 0;
          await assert.rejects(stuck.getManifest(`${reg.host}/obd/app:v1`), PermissionDeniedError);
          // The anonymous first request, the refused token, one refresh, then give up.
          assert.equal(events.filter((e) => e.url.includes('/manifests/')).length, 3, 'one refresh, then give up');
        } finally {
          ts.issueExpired(0);
          await stuck.close();
        }
      });

      test('cached tokens are reused per scope and refetched when expires_in passes', async () => {
        const ts = reg.tokenServer;
        assert.ok(ts !== undefined);
        ts.setExpiresIn(1);
        try {
          const c = clientFor(reg);
          const before = ts.issued.length;
          await c.getManifest(`${reg.host}/obd/app:v1`);
          await c.headBlob(repo, blobDigest);
          assert.equal(ts.issued.length - before, 1, 'one token for one scope');
          await new Promise((r) => setTimeout(r, 1100));
          events.length = 0;
          await c.getManifest(`${reg.host}/obd/app:v1`);
          assert.equal(ts.issued.length - before, 2, 'expired token replaced');
          assert.equal(events.filter((e) => e.status === 401).length, 0, 'replaced before the registry refused it');
          await c.close();
        } finally {
          ts.setExpiresIn(300);
        }
      });

      test('one caller aborting does not fail others waiting on the same ping and token', async () => {
        const ts = reg.tokenServer;
        assert.ok(ts !== undefined);
        const c = clientFor(reg);
        const before = ts.issued.length;
        const ac = new AbortController();
        const reason = new Error('reader gave up');
        const first = c.getBlobRange(repo, blobDigest, { offset: 0, length: 10, signal: ac.signal });
        const second = c.getBlobRange(repo, blobDigest, { offset: 10, length: 10 });
        ac.abort(reason);
        await assert.rejects(first, (e) => e === reason);
        assert.deepEqual(Buffer.from(await second), Buffer.from(BLOB.subarray(10, 20)));
        assert.equal(ts.issued.length - before, 1, 'one shared token request');
        await c.close();
      });

      test('token answers with access_token instead of token are accepted', async () => {
        const ts = reg.tokenServer;
        assert.ok(ts !== undefined);
        ts.setField('access_token');
        try {
          const c = clientFor(reg);
          assert.equal((await c.getManifest(`${reg.host}/obd/app:v1`)).mediaType, MANIFEST_MEDIA_TYPES.ociManifest);
          await c.close();
        } finally {
          ts.setField('token');
        }
      });
    }
  });
}
