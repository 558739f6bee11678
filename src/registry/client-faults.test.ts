/**
 * RegistryClient against an in-process fake registry that injects the faults a real
 * registry does not produce on demand: 307 redirects to presigned storage URLs (which
 * must get no Authorization header) that later expire, servers that ignore Range or
 * answer the wrong Content-Range, bodies cut mid-transfer, corrupted content, 503s, a
 * P2P proxy prefix, and a slow consumer (backpressure).
 */
import { test, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { DataCorruptionError, UnsupportedError } from '../io/errors.ts';
import { xs } from '../../test/support/generators.ts';
import { RegistryClient } from './client.ts';
import { staticCredentials } from './credentials.ts';
import { digestOf } from './digest.ts';
import { REQUEST_CHANNEL } from './instrumentation.ts';
import type { RegistryRequestEvent } from './instrumentation.ts';
import { createBlobRangeSource } from './blob-range-source.ts';
import { DEFAULT_USER_AGENT } from './user-agent.ts';

const USER = 'fake-user';
const PASSWORD = 'fake-pass-Q7';
const BASIC = `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}`;
const BLOB = xs(1024 * 1024, 3);
const DIGEST = digestOf(BLOB);
const MANIFEST = new TextEncoder().encode('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}');
const BIG_SIZE = 64 * 1024 * 1024;
const BIG_DIGEST = `sha256:${'0'.repeat(64)}`;

interface Seen {
  path: string;
  method: string;
  authorization: string | undefined;
  range: string | undefined;
  ifMatch: string | undefined;
  userAgent: string | undefined;
}

/** Behaviour switches of the fake, reset before each test. */
const quirks = {
  redirect: false,
  ignoreRange: false,
  wrongContentRange: false,
  truncateOnceAfter: 0,
  fail503Once: false,
  corrupt: false,
  wrongManifest: false,
};
let signature = 0;
const expired = new Set<string>();
const seen: Seen[] = [];
const big = { written: 0, closed: false };

let server: Server;
let base: string;
let host: string;

function serveBlob(req: IncomingMessage, res: ServerResponse, bytes: Uint8Array): void {
  const etag = `"${DIGEST}"`;
  const ifMatch = req.headers['if-match'];
  if (ifMatch !== undefined && ifMatch !== etag) {
    res.writeHead(412).end();
    return;
  }
  if (quirks.fail503Once) {
    quirks.fail503Once = false;
    res.writeHead(503, { 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}');
    return;
  }
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  let start = 0;
  let end = bytes.length - 1;
  let status = 200;
  const headers: Record<string, string> = { etag, 'accept-ranges': 'bytes', 'content-type': 'application/octet-stream' };
  if (m !== null && !quirks.ignoreRange) {
    start = Number(m[1]);
    end = m[2] === '' ? bytes.length - 1 : Math.min(Number(m[2]), bytes.length - 1);
    status = 206;
    const shown = quirks.wrongContentRange ? `bytes ${start + 1}-${end + 1}/${bytes.length}` : `bytes ${start}-${end}/${bytes.length}`;
    headers['content-range'] = shown;
  }
  const body = bytes.subarray(start, end + 1);
  headers['content-length'] = String(body.length);
  res.writeHead(status, headers);
  if (req.method === 'HEAD') {
    res.end();
    return;
  }
  if (quirks.truncateOnceAfter > 0 && body.length > quirks.truncateOnceAfter) {
    const cut = quirks.truncateOnceAfter;
    quirks.truncateOnceAfter = 0;
    res.write(body.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 10));
    return;
  }
  res.end(body);
}

async function serveBig(res: ServerResponse): Promise<void> {
  res.writeHead(200, { 'content-length': String(BIG_SIZE), 'content-type': 'application/octet-stream' });
  res.once('close', () => {
    big.closed = true;
  });
  const chunk = new Uint8Array(64 * 1024);
  while (big.written < BIG_SIZE && !res.destroyed) {
    big.written += chunk.length;
    if (!res.write(chunk)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          res.off('drain', done).off('close', done);
          resolve();
        };
        res.on('drain', done).on('close', done);
      });
    }
  }
  res.end();
}

async function proxy(req: IncomingMessage, res: ServerResponse, target: string): Promise<void> {
  const headers: Record<string, string> = {};
  for (const h of ['authorization', 'range', 'if-match']) {
    const v = req.headers[h];
    if (typeof v === 'string') headers[h] = v;
  }
  const upstream = await fetch(target, { headers, redirect: 'manual' });
  const out: Record<string, string> = {};
  upstream.headers.forEach((v, k) => {
    if (k !== 'content-encoding' && k !== 'transfer-encoding' && k !== 'connection') out[k] = v;
  });
  res.writeHead(upstream.status, out);
  res.end(Buffer.from(await upstream.arrayBuffer()));
}

function handle(req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', base);
  seen.push({
    path: url.pathname + url.search,
    method: req.method ?? '',
    authorization: req.headers.authorization,
    range: req.headers.range,
    ifMatch: req.headers['if-match'] as string | undefined,
    userAgent: req.headers['user-agent'],
  });
  if (url.pathname.startsWith('/p2p/')) {
    void proxy(req, res, (req.url ?? '').slice('/p2p/'.length)).catch(() => res.destroy());
    return;
  }
  if (url.pathname.startsWith('/storage/')) {
    const sig = url.searchParams.get('X-Amz-Signature') ?? '';
    if (expired.has(sig)) {
      res.writeHead(403, { 'content-type': 'application/xml' }).end('<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>');
      return;
    }
    serveBlob(req, res, quirks.corrupt ? xs(BLOB.length, 4) : BLOB);
    return;
  }
  if (req.headers.authorization !== BASIC) {
    res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"', 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
    return;
  }
  if (url.pathname === '/v2/') {
    res.writeHead(200).end('{}');
    return;
  }
  if (url.pathname === `/v2/big/blobs/${BIG_DIGEST}`) {
    void serveBig(res);
    return;
  }
  if (url.pathname === `/v2/r/manifests/${digestOf(MANIFEST)}`) {
    const body = quirks.wrongManifest ? new TextEncoder().encode('{"schemaVersion":2,"tampered":true}') : MANIFEST;
    res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': String(body.length) }).end(body);
    return;
  }
  if (url.pathname === `/v2/r/blobs/${DIGEST}`) {
    if (quirks.redirect) {
      signature++;
      res.writeHead(307, { location: `/storage/${DIGEST}?X-Amz-Signature=sig-${signature}&X-Amz-Expires=60` }).end();
      return;
    }
    serveBlob(req, res, quirks.corrupt ? xs(BLOB.length, 4) : BLOB);
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}');
}

const events: RegistryRequestEvent[] = [];
const listener = (e: unknown): void => {
  events.push(e as RegistryRequestEvent);
};

before(async () => {
  server = createServer(handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  base = `http://127.0.0.1:${port}`;
  host = `127.0.0.1:${port}`;
  subscribe(REQUEST_CHANNEL, listener);
});

after(async () => {
  unsubscribe(REQUEST_CHANNEL, listener);
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

beforeEach(() => {
  Object.assign(quirks, { redirect: false, ignoreRange: false, wrongContentRange: false, truncateOnceAfter: 0, fail503Once: false, corrupt: false, wrongManifest: false });
  seen.length = 0;
  events.length = 0;
  expired.clear();
});

function client(extra: ConstructorParameters<typeof RegistryClient>[0] = {}): RegistryClient {
  return new RegistryClient({
    plainHttp: [host],
    credentials: staticCredentials({ [host]: { username: USER, password: PASSWORD } }),
    retry: { baseDelayMs: 1, maxDelayMs: 5 },
    ...extra,
  });
}

const repo = (): { registry: string; repository: string } => ({ registry: host, repository: 'r' });

test('blob GETs follow a 307 without Authorization and remember the target', async () => {
  quirks.redirect = true;
  const c = client();
  for (const [offset, length] of [
    [0, 100],
    [5000, 70_000],
    [BLOB.length - 10, 10],
  ] as const) {
    assert.deepEqual(Buffer.from(await c.getBlobRange(repo(), DIGEST, { offset, length })), Buffer.from(BLOB.subarray(offset, offset + length)));
  }
  // The first request goes out without credentials (it is the client's ping) and is refused.
  const anonymous = seen.filter((s) => s.path.startsWith('/v2/r/blobs/') && s.authorization === undefined);
  assert.equal(anonymous.length, 1);
  const front = seen.filter((s) => s.path.startsWith('/v2/r/blobs/') && s.authorization !== undefined);
  const storage = seen.filter((s) => s.path.startsWith('/storage/'));
  assert.equal(front.length, 1, 'resolved once');
  assert.equal(front[0]?.authorization, BASIC);
  assert.equal(storage.length, 3);
  assert.ok(storage.every((s) => s.authorization === undefined), 'no Authorization to the redirect target');
  assert.ok(seen.every((s) => s.userAgent === DEFAULT_USER_AGENT), 'every request names the client');
  assert.deepEqual(
    storage.map((s) => s.range),
    ['bytes=0-99', 'bytes=5000-74999', `bytes=${BLOB.length - 10}-${BLOB.length - 1}`],
  );
  await c.close();
});

test('an expired redirect target is resolved again; its signature never shows in events or errors', async () => {
  quirks.redirect = true;
  const c = client();
  await c.getBlobRange(repo(), DIGEST, { offset: 0, length: 10 });
  expired.add(`sig-${signature}`);
  seen.length = 0;
  assert.deepEqual(Buffer.from(await c.getBlobRange(repo(), DIGEST, { offset: 10, length: 10 })), Buffer.from(BLOB.subarray(10, 20)));
  assert.deepEqual(
    seen.map((s) => [s.path.split('?')[0], s.authorization !== undefined]),
    [
      [`/storage/${DIGEST}`, false],
      [`/v2/r/blobs/${DIGEST}`, true],
      [`/storage/${DIGEST}`, false],
    ],
  );
  assert.doesNotMatch(JSON.stringify(events), /sig-\d/);
  assert.match(JSON.stringify(events), /X-Amz-Signature=REDACTED/);
  // Every target refused: the error names the redacted URL only.
  const c2 = client();
  for (let i = signature + 1; i < signature + 10; i++) expired.add(`sig-${i}`);
  await assert.rejects(c2.getBlobRange(repo(), DIGEST, { offset: 0, length: 10 }), (e: unknown) => {
    assert.doesNotMatch(String((e as Error).message) + String((e as Error).cause), /sig-\d/);
    return true;
  });
  await c.close();
  await c2.close();
});

test('a 200 answer to a range request is sliced within maxRangeSkipBytes, refused beyond', async () => {
  quirks.ignoreRange = true;
  const c = client({ maxRangeSkipBytes: 600_000 });
  assert.deepEqual(Buffer.from(await c.getBlobRange(repo(), DIGEST, { offset: 0, length: 1000 })), Buffer.from(BLOB.subarray(0, 1000)));
  assert.deepEqual(Buffer.from(await c.getBlobRange(repo(), DIGEST, { offset: 500_000, length: 1000 })), Buffer.from(BLOB.subarray(500_000, 501_000)));
  await assert.rejects(c.getBlobRange(repo(), DIGEST, { offset: 700_000, length: 10 }), (e: unknown) => e instanceof UnsupportedError && /ignored the Range header/.test(e.message));
  await c.close();
});

test('a 206 with a Content-Range other than the one asked for is DataCorruptionError', async () => {
  quirks.wrongContentRange = true;
  const c = client();
  await assert.rejects(c.getBlobRange(repo(), DIGEST, { offset: 100, length: 100 }), (e: unknown) => e instanceof DataCorruptionError && /answered range bytes 101-200/.test(e.message));
  await c.close();
});

test('a range body cut mid-transfer resumes from the next byte with If-Match', async () => {
  const c = client();
  await c.getBlobRange(repo(), DIGEST, { offset: 0, length: 1 });
  seen.length = 0;
  quirks.truncateOnceAfter = 200_000;
  const got = await c.getBlobRange(repo(), DIGEST, { offset: 1000, length: 500_000 });
  assert.deepEqual(Buffer.from(got), Buffer.from(BLOB.subarray(1000, 501_000)));
  const gets = seen.filter((s) => s.path === `/v2/r/blobs/${DIGEST}`);
  assert.equal(gets.length, 2);
  assert.equal(gets[0]?.range, 'bytes=1000-500999');
  assert.match(gets[1]?.range ?? '', /^bytes=(\d+)-500999$/);
  const resumedAt = Number(/^bytes=(\d+)-/.exec(gets[1]?.range ?? '')?.[1]);
  assert.ok(resumedAt > 1000 && resumedAt <= 201_000, `resumed at ${resumedAt}`);
  assert.equal(gets[1]?.ifMatch, `"${DIGEST}"`);
  await c.close();
});

test('getBlob() resumes a cut transfer and still verifies the whole blob', async () => {
  const c = client();
  quirks.truncateOnceAfter = 300_000;
  const parts: Uint8Array[] = [];
  for await (const chunk of await c.getBlob(repo(), DIGEST, { size: BLOB.length })) parts.push(chunk);
  assert.deepEqual(Buffer.concat(parts), Buffer.from(BLOB));
  assert.equal(seen.filter((s) => s.path === `/v2/r/blobs/${DIGEST}` && s.authorization !== undefined).length, 2);
  await c.close();
});

test('getBlob() of corrupted content fails at EOF with DataCorruptionError', async () => {
  quirks.corrupt = true;
  const c = client();
  const stream = await c.getBlob(repo(), DIGEST);
  let received = 0;
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) received += chunk.length;
    })(),
    (e: unknown) => e instanceof DataCorruptionError && /content hashes to sha256:/.test(e.message),
  );
  assert.equal(received, BLOB.length, 'the error comes at EOF');
  await c.close();
});

test('a temporary 503 is retried', async () => {
  const c = client();
  await c.getBlobRange(repo(), DIGEST, { offset: 0, length: 1 });
  quirks.fail503Once = true;
  events.length = 0;
  assert.deepEqual(Buffer.from(await c.getBlobRange(repo(), DIGEST, { offset: 7, length: 3 })), Buffer.from(BLOB.subarray(7, 10)));
  assert.deepEqual(
    events.map((e) => e.status),
    [503, 206],
  );
  await c.close();
});

test('getManifest() by digest rejects bytes that do not hash to it; a custom user agent is sent', async () => {
  const c = client({ userAgent: 'obd-test/1.0' });
  const ref = `${host}/r@${digestOf(MANIFEST)}`;
  assert.deepEqual(Buffer.from((await c.getManifest(ref)).bytes), Buffer.from(MANIFEST));
  assert.ok(seen.length > 0 && seen.every((s) => s.userAgent === 'obd-test/1.0'));
  quirks.wrongManifest = true;
  await assert.rejects(c.getManifest(ref), DataCorruptionError);
  await c.close();
});

test('with a P2P proxy, blob data requests go to proxy + "/" + URL', async () => {
  const c = client({ p2pProxy: `${base}/p2p` });
  const source = createBlobRangeSource(c, repo(), { digest: DIGEST, size: BLOB.length });
  assert.deepEqual(Buffer.from(await source.fetch(300, 400)), Buffer.from(BLOB.subarray(300, 700)));
  assert.deepEqual(Buffer.from(await source.fetch(9000, 10)), Buffer.from(BLOB.subarray(9000, 9010)));
  const viaProxy = seen.filter((s) => s.path.startsWith('/p2p/'));
  assert.deepEqual(
    viaProxy.map((s) => [s.path, s.range]),
    [
      [`/p2p/${base}/v2/r/blobs/${DIGEST}`, 'bytes=300-699'],
      [`/p2p/${base}/v2/r/blobs/${DIGEST}`, 'bytes=9000-9009'],
    ],
  );
  assert.ok(viaProxy.every((s) => s.authorization === BASIC), 'self mode: registry credentials travel with the data request');
  // Redirect mode: the proxy gets the storage URL and no credentials.
  quirks.redirect = true;
  seen.length = 0;
  const c2 = client({ p2pProxy: `${base}/p2p/` });
  assert.deepEqual(Buffer.from(await c2.getBlobRange(repo(), DIGEST, { offset: 1, length: 2 })), Buffer.from(BLOB.subarray(1, 3)));
  const proxied = seen.filter((s) => s.path.startsWith('/p2p/'));
  assert.equal(proxied.length, 1);
  assert.match(proxied[0]?.path ?? '', new RegExp(`^/p2p/${base}/storage/`));
  assert.equal(proxied[0]?.authorization, undefined);
  await c.close();
  await c2.close();
});

test('createBlobRangeSource() checks bounds against the blob size', async () => {
  const c = client();
  const source = createBlobRangeSource(c, repo(), { digest: DIGEST, size: BLOB.length });
  assert.equal(source.size, BLOB.length);
  await assert.rejects(source.fetch(BLOB.length - 1, 2), RangeError);
  await assert.rejects(source.fetch(-1, 1), RangeError);
  assert.equal((await source.fetch(BLOB.length, 0)).length, 0);
  const lying = createBlobRangeSource(c, repo(), { digest: DIGEST, size: BLOB.length + 5 });
  await assert.rejects(lying.fetch(0, 10), DataCorruptionError);
  assert.throws(() => createBlobRangeSource(c, repo(), { digest: 'sha256:xyz', size: 1 }), /Cannot use digest/);
  assert.throws(() => source.stream(BLOB.length, 1), RangeError);
  await c.close();
});

test('streamBlobRange() yields exactly the range as it arrives, across a resume; breaking out cancels', async () => {
  const c = client();
  const source = createBlobRangeSource(c, repo(), { digest: DIGEST, size: BLOB.length });
  quirks.truncateOnceAfter = 100_000;
  const pieces: Uint8Array[] = [];
  for await (const piece of source.stream(10, 600_000)) pieces.push(piece);
  assert.ok(pieces.length > 1);
  assert.deepEqual(Buffer.concat(pieces), Buffer.from(BLOB.subarray(10, 600_010)));
  events.length = 0;
  for await (const piece of source.stream(0, BLOB.length)) {
    assert.ok(piece.length > 0);
    break;
  }
  for (let i = 0; i < 50 && events.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(events.length, 1);
  assert.ok((events[0]?.bytes ?? 0) < BLOB.length, 'the rest was not downloaded');
  await c.close();
});

test('getBlob() applies backpressure: a paused consumer stops the server', async () => {
  big.written = 0;
  big.closed = false;
  const c = client();
  const stream = await c.getBlob({ registry: host, repository: 'big' }, BIG_DIGEST, { size: BIG_SIZE });
  const reader = stream.getReader();
  await reader.read();
  await new Promise((r) => setTimeout(r, 300));
  const whilePaused = big.written;
  await new Promise((r) => setTimeout(r, 200));
  assert.ok(big.written < 16 * 1024 * 1024, `server wrote ${big.written} bytes to a paused consumer`);
  assert.equal(big.written, whilePaused, 'no progress while paused');
  await reader.cancel();
  for (let i = 0; i < 100 && !big.closed; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(big.closed, true, 'cancel closes the connection');
  await c.close();
});
