/**
 * Endpoint selection against real registries: TLS verification, `insecure` hosts (no
 * verification; plain HTTP when the host does not speak TLS), a private CA, and pull
 * mirrors with fallback to the upstream registry.
 */
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { FailedPreconditionError } from '../io/errors.ts';
import { startRegistry } from '../../test/support/registry.ts';
import type { TestRegistry } from '../../test/support/registry.ts';
import { xs } from '../../test/support/generators.ts';
import { RegistryClient } from './client.ts';
import { digestOf } from './digest.ts';
import { REQUEST_CHANNEL } from './instrumentation.ts';
import type { RegistryRequestEvent } from './instrumentation.ts';

const events: RegistryRequestEvent[] = [];
const listener = (e: unknown): void => {
  events.push(e as RegistryRequestEvent);
};
before(() => subscribe(REQUEST_CHANNEL, listener));
after(() => unsubscribe(REQUEST_CHANNEL, listener));

const retry = { baseDelayMs: 1, maxDelayMs: 5 };
const DATA = xs(256 * 1024, 11);
const DIGEST = digestOf(DATA);

describe('TLS registries', () => {
  let reg: TestRegistry;
  before(async () => {
    reg = await startRegistry({ auth: 'none', tls: true });
  });
  after(() => reg?.stop());

  test('a self-signed certificate is refused by default with a permanent TLS error', async () => {
    const c = new RegistryClient({ retry });
    events.length = 0;
    await assert.rejects(c.headBlob(`${reg.host}/tls/x`, DIGEST), (e: unknown) => e instanceof FailedPreconditionError && /TLS certificate not trusted/.test(e.message));
    assert.equal(events.length, 1, 'not retried');
    await c.close();
  });

  test('insecure hosts skip verification', async () => {
    const c = new RegistryClient({ insecure: [reg.host], retry });
    assert.equal((await c.pushBlob(`${reg.host}/tls/x`, DATA)).status, 'uploaded');
    assert.deepEqual(Buffer.from(await c.getBlobRange(`${reg.host}/tls/x`, DIGEST, { offset: 10, length: 20 })), Buffer.from(DATA.subarray(10, 30)));
    assert.ok(events.some((e) => e.url.startsWith(`https://${reg.host}/`)));
    await c.close();
  });

  test('a per-host CA verifies the certificate', async () => {
    const c = new RegistryClient({ tls: { [reg.host]: { ca: readFileSync(reg.tlsCertPath as string) } }, retry });
    assert.equal((await c.headBlob(`${reg.host}/tls/x`, DIGEST))?.size, DATA.length);
    await c.close();
  });
});

describe('plain-HTTP and mirrors', () => {
  let upstream: TestRegistry;
  let mirror: TestRegistry;
  let closedPort: number;
  const mirrorOnly = xs(64 * 1024, 12);

  before(async () => {
    [upstream, mirror] = await Promise.all([startRegistry({ auth: 'none' }), startRegistry({ auth: 'none' })]);
    const plain = new RegistryClient({ plainHttp: [upstream.host, mirror.host], retry });
    await plain.pushBlob(`${upstream.host}/lib/app`, DATA);
    await plain.pushBlob(`${mirror.host}/lib/app`, mirrorOnly);
    const manifest = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(mirrorOnly), size: mirrorOnly.length },
        layers: [],
      }),
    );
    await plain.pushManifest(`${mirror.host}/lib/app:cached`, { bytes: manifest });
    await plain.close();
    const srv = createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    closedPort = (srv.address() as AddressInfo).port;
    await new Promise<void>((r) => srv.close(() => r()));
  });
  after(async () => {
    await Promise.all([upstream?.stop(), mirror?.stop()]);
  });

  test('an insecure host that does not speak TLS is reached over plain HTTP', async () => {
    const c = new RegistryClient({ insecure: [upstream.host], retry });
    events.length = 0;
    assert.equal((await c.headBlob(`${upstream.host}/lib/app`, DIGEST))?.size, DATA.length);
    assert.equal(events[0]?.url, `https://${upstream.host}/v2/`);
    assert.equal(events[0]?.status, 0);
    assert.ok(events.slice(1).every((e) => e.url.startsWith('http://')));
    await c.close();
  });

  test('pulls try the mirror first and fall back to the upstream registry', async () => {
    const c = new RegistryClient({ plainHttp: [upstream.host], mirrors: { [upstream.host]: [`http://${mirror.host}`] }, retry });
    events.length = 0;
    const m = await c.getManifest(`${upstream.host}/lib/app:cached`);
    assert.equal(m.mediaType, 'application/vnd.oci.image.manifest.v1+json');
    assert.ok(events.every((e) => e.url.includes(mirror.host)), 'served by the mirror');

    events.length = 0;
    assert.deepEqual(Buffer.from(await c.getBlobRange(`${upstream.host}/lib/app`, DIGEST, { offset: 0, length: 100 })), Buffer.from(DATA.subarray(0, 100)));
    assert.deepEqual(
      events.filter((e) => e.url.includes('/blobs/')).map((e) => [e.url.includes(mirror.host) ? 'mirror' : 'upstream', e.status]),
      [
        ['mirror', 404],
        ['upstream', 206],
      ],
    );
    events.length = 0;
    await c.getBlobRange(`${upstream.host}/lib/app`, DIGEST, { offset: 100, length: 100 });
    assert.deepEqual(
      events.map((e) => [e.url.includes(mirror.host) ? 'mirror' : 'upstream', e.status]),
      [['upstream', 206]],
      'the serving endpoint is remembered per blob',
    );
    await c.close();
  });

  test('an unreachable mirror is skipped; pushes never go to mirrors', async () => {
    const c = new RegistryClient({ plainHttp: [upstream.host], mirrors: { [upstream.host]: [`http://127.0.0.1:${closedPort}`] }, retry: { ...retry, attempts: 2 } });
    assert.equal((await c.headBlob(`${upstream.host}/lib/app`, DIGEST))?.size, DATA.length);
    const pushed = await c.pushBlob(`${upstream.host}/lib/other`, mirrorOnly);
    assert.equal(pushed.status, 'uploaded');
    const direct = new RegistryClient({ plainHttp: [upstream.host, mirror.host], retry });
    assert.equal((await direct.headBlob(`${upstream.host}/lib/other`, pushed.digest))?.size, mirrorOnly.length);
    assert.equal(await direct.headBlob(`${mirror.host}/lib/other`, pushed.digest), undefined);
    await c.close();
    await direct.close();
  });
});
