import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DataCorruptionError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
  UnsupportedError,
} from '../io/errors.ts';
import {
  errorFromResponse,
  isTemporary,
  MAX_ERROR_BODY,
  networkError,
  parseErrorBody,
  parseRetryAfter,
  PermissionDeniedError,
  RegistryError,
  registryErrorOf,
} from './errors.ts';
import { redactUrl } from './_redact.ts';
import type { HttpResponse } from './transport.ts';

const url = new URL('https://reg.example/v2/a/b/manifests/latest');
const req = { method: 'GET' as const, url };

function response(status: number, body: string | Uint8Array, headers: Record<string, string> = {}): HttpResponse {
  const bytes = typeof body === 'string' ? new TextEncoder().encode(body) : body;
  return { status, headers: new Headers(headers), url, body: new Blob([bytes]).stream() };
}

test('parseErrorBody() reads distribution-spec errors and ignores junk', () => {
  const body = JSON.stringify({ errors: [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown', detail: { Tag: 'x' } }, { code: 7 }, 'x', { code: 'DENIED' }] });
  assert.deepEqual(parseErrorBody(new TextEncoder().encode(body)), [
    { code: 'MANIFEST_UNKNOWN', message: 'manifest unknown', detail: { Tag: 'x' } },
    { code: 'DENIED', message: '' },
  ]);
  assert.deepEqual(parseErrorBody(new TextEncoder().encode('<html>bad gateway</html>')), []);
  assert.deepEqual(parseErrorBody(new TextEncoder().encode('null')), []);
});

test('errorFromResponse() maps statuses and codes to the domain errors with a RegistryError cause', async () => {
  const cases: [number, string, new (...a: never[]) => Error][] = [
    [404, '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}', NotFoundError],
    [400, '{"errors":[{"code":"BLOB_UNKNOWN","message":"x"}]}', NotFoundError],
    [401, '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}', PermissionDeniedError],
    [403, '', PermissionDeniedError],
    [429, '{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}', UnavailableError],
    [503, 'upstream down', UnavailableError],
    [400, '{"errors":[{"code":"DIGEST_INVALID","message":"x"}]}', InvalidArgumentError],
    [416, '', InvalidArgumentError],
    [405, '{"errors":[{"code":"UNSUPPORTED","message":"x"}]}', UnsupportedError],
    [409, '', FailedPreconditionError],
  ];
  for (const [status, body, cls] of cases) {
    const e = await errorFromResponse(response(status, body), req, 'get manifest a/b:latest');
    assert.ok(e instanceof cls, `${status} ${body} → ${e.name}`);
    const reg = registryErrorOf(e);
    assert.ok(reg instanceof RegistryError);
    assert.equal(reg.status, status);
    assert.equal(reg.method, 'GET');
    assert.equal(reg.url, url.href);
    assert.match(e.message, new RegExp(`^Cannot get manifest a/b:latest: registry answered ${status}`));
  }
  const nf = await errorFromResponse(response(404, cases[0]?.[1] as string), req, 'get manifest a/b:latest');
  assert.equal(nf.message, 'Cannot get manifest a/b:latest: registry answered 404 MANIFEST_UNKNOWN (manifest unknown)');
  assert.deepEqual(registryErrorOf(nf)?.errors, [{ code: 'MANIFEST_UNKNOWN', message: 'manifest unknown' }]);
});

test('errorFromResponse() reads at most 64 KiB of an error body', async () => {
  let pulled = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(c) {
      pulled += 16384;
      c.enqueue(new Uint8Array(16384).fill(0x20));
      if (pulled > 10 * MAX_ERROR_BODY) c.close();
    },
  });
  const e = await errorFromResponse({ status: 500, headers: new Headers(), url, body }, req, 'x');
  assert.ok(e instanceof UnavailableError);
  assert.ok(pulled <= MAX_ERROR_BODY + 2 * 16384, `pulled ${pulled}`);
});

test('RegistryError.isTemporary() and isTemporary() follow statuses, codes and classes', () => {
  const mk = (status: number, codes: string[] = []): RegistryError =>
    new RegistryError({ status, method: 'GET', url, errors: codes.map((code) => ({ code, message: '' })) });
  assert.equal(mk(429).isTemporary(), true);
  assert.equal(mk(502).isTemporary(), true);
  assert.equal(mk(408).isTemporary(), true);
  assert.equal(mk(404).isTemporary(), false);
  assert.equal(mk(400, ['UNAVAILABLE']).isTemporary(), true);
  assert.equal(mk(401, ['UNAUTHORIZED']).isTemporary(), false);
  assert.equal(isTemporary(new UnavailableError('x')), true);
  assert.equal(isTemporary(new NotFoundError('x', { cause: mk(404) })), false);
  assert.equal(isTemporary(new UnavailableError('x', { cause: mk(503) })), true);
  assert.equal(isTemporary(new DataCorruptionError('x')), false);
  assert.equal(isTemporary(new TypeError('x')), false);
});

test('parseRetryAfter() reads seconds and HTTP dates', () => {
  assert.equal(parseRetryAfter('3'), 3000);
  assert.equal(parseRetryAfter(new Date(10_000).toUTCString(), 4000), 6000);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter('soon'), undefined);
});

test('networkError() names the code, keeps TLS trust failures permanent, redacts URLs', () => {
  const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
  const e = networkError(new TypeError('fetch failed', { cause: refused }), { method: 'GET', url: new URL('http://u:secretpw@h:1/v2/?X-Amz-Signature=abc&digest=sha256:1') });
  assert.ok(e instanceof UnavailableError);
  assert.equal(e.message, 'Cannot GET http://h:1/v2/?X-Amz-Signature=REDACTED&digest=sha256:1: connection refused (ECONNREFUSED)');
  const tls = networkError(Object.assign(new Error('self-signed'), { code: 'DEPTH_ZERO_SELF_SIGNED_CERT' }), req);
  assert.ok(tls instanceof FailedPreconditionError);
  assert.equal(isTemporary(tls), false);
});

test('redactUrl() drops user info and secret-looking query values', () => {
  assert.equal(redactUrl('https://user:pw@h/p?token=t1&access_token=t2&_state=s&mount=sha256:x&from=a/b'), 'https://h/p?token=REDACTED&access_token=REDACTED&_state=REDACTED&mount=sha256:x&from=a/b');
  assert.equal(redactUrl('not a url'), '<invalid URL>');
});
