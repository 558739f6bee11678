import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseWwwAuthenticate } from './challenge.ts';
import { authMethodOf } from './auth.ts';

test('parseWwwAuthenticate() reads a Docker Hub Bearer challenge with a comma inside the quoted scope', () => {
  const [c, ...rest] = parseWwwAuthenticate(
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push"',
  );
  assert.equal(rest.length, 0);
  assert.deepEqual(c, {
    scheme: 'bearer',
    params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/alpine:pull,push' },
  });
});

test('parseWwwAuthenticate() splits several challenges joined in one header', () => {
  const cs = parseWwwAuthenticate('Bearer realm="http://a/token",service="s", Basic realm="x, y"');
  assert.deepEqual(
    cs.map((c) => [c.scheme, c.params]),
    [
      ['bearer', { realm: 'http://a/token', service: 's' }],
      ['basic', { realm: 'x, y' }],
    ],
  );
});

test('parseWwwAuthenticate() handles escapes, spaces around =, unquoted values and case', () => {
  const [c] = parseWwwAuthenticate('BEARER Realm = "a\\"b" , Service=reg.example:5000 ,error="insufficient_scope",scope="repository:a:pull repository:b:pull"');
  assert.deepEqual(c?.params, { realm: 'a"b', service: 'reg.example:5000', error: 'insufficient_scope', scope: 'repository:a:pull repository:b:pull' });
  assert.equal(c?.scheme, 'bearer');
});

test('parseWwwAuthenticate() accepts token68 and bare schemes, survives junk', () => {
  assert.deepEqual(parseWwwAuthenticate('Negotiate abc123=='), [{ scheme: 'negotiate', params: {}, token68: 'abc123==' }]);
  assert.deepEqual(parseWwwAuthenticate('Basic'), [{ scheme: 'basic', params: {} }]);
  assert.deepEqual(parseWwwAuthenticate(''), []);
  assert.deepEqual(parseWwwAuthenticate('Bearer realm="unterminated'), [{ scheme: 'bearer', params: { realm: 'unterminated' } }]);
  assert.doesNotThrow(() => parseWwwAuthenticate('=,,="x" ;; Basic realm=1'));
});

test('authMethodOf() prefers Bearer, needs a realm, falls back to Basic', () => {
  assert.deepEqual(authMethodOf(parseWwwAuthenticate('Basic realm="r", Bearer realm="http://t/token",service="svc"')), {
    kind: 'bearer',
    realm: 'http://t/token',
    service: 'svc',
  });
  assert.deepEqual(authMethodOf(parseWwwAuthenticate('Basic realm="r"')), { kind: 'basic' });
  assert.equal(authMethodOf(parseWwwAuthenticate('Bearer service="s"')), undefined);
  assert.equal(authMethodOf(parseWwwAuthenticate('Digest realm="x"')), undefined);
});
