import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError } from '../io/errors.ts';
import {
  chainCredentials,
  credentialCandidates,
  credJsonCredentials,
  dockerConfigCredentials,
  dockerConfigPath,
  matchCredentialDocument,
  normalizeConfigKey,
  staticCredentials,
} from './credentials.ts';

const dir = mkdtempSync(join(tmpdir(), 'obd-creds-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const b64 = (s: string): string => Buffer.from(s).toString('base64');
const HOST = 'reg.example:5000';

test('credentialCandidates() lists the host and every repository prefix (runtime.md §4.1)', () => {
  assert.deepEqual(credentialCandidates(HOST, 'ns/repo/sub'), [HOST, `${HOST}/ns`, `${HOST}/ns/repo`, `${HOST}/ns/repo/sub`]);
});

test('matchCredentialDocument() takes the first entry in document order whose key is a candidate', () => {
  const doc = {
    auths: {
      'other.example': { username: 'x', password: 'x' },
      [`${HOST}/ns/repo/sub/blobs`]: { username: 'no', password: 'no' },
      [`${HOST}/ns`]: { username: 'ns-user', password: 'ns-pass' },
      [HOST]: { username: 'host-user', password: 'host-pass' },
    },
  };
  assert.deepEqual(matchCredentialDocument(doc, HOST, 'ns/repo/sub'), { username: 'ns-user', password: 'ns-pass' });
  assert.deepEqual(matchCredentialDocument(doc, HOST, 'other/repo'), { username: 'host-user', password: 'host-pass' });
  // Document order, not specificity: a host entry listed first wins over a deeper one.
  const hostFirst = { auths: { [HOST]: { username: 'h', password: 'h' }, [`${HOST}/ns/repo`]: { username: 'deep', password: 'd' } } };
  assert.deepEqual(matchCredentialDocument(hostFirst, HOST, 'ns/repo'), { username: 'h', password: 'h' });
  assert.equal(matchCredentialDocument(doc, 'reg.example', 'ns/repo'), undefined, 'the port is part of the host');
  assert.equal(matchCredentialDocument({ auths: { [`${HOST}/ns/rep`]: { username: 'u', password: 'p' } } }, HOST, 'ns/repo'), undefined);
});

test('matchCredentialDocument(): auth beats username/password, auth without ":" and empty entries are skipped', () => {
  assert.deepEqual(matchCredentialDocument({ auths: { [HOST]: { auth: b64('a:b:c'), username: 'u', password: 'p' } } }, HOST, 'x'), {
    username: 'a',
    password: 'b:c',
  });
  const skipping = {
    auths: {
      [HOST]: { auth: b64('nocolon') },
      [`${HOST}/x`]: { username: 'only-user' },
      [`${HOST}/x/y`]: { username: 'u2', password: 'p2' },
    },
  };
  assert.deepEqual(matchCredentialDocument(skipping, HOST, 'x/y'), { username: 'u2', password: 'p2' });
  assert.equal(matchCredentialDocument({ auths: { [HOST]: { auth: '' } } }, HOST, 'x'), undefined);
  assert.equal(matchCredentialDocument({}, HOST, 'x'), undefined);
  assert.equal(matchCredentialDocument(null, HOST, 'x'), undefined);
});

test('credJsonCredentials() re-reads the file on every call; a missing file is anonymous', async () => {
  const path = join(dir, 'cred.json');
  const provider = credJsonCredentials(path);
  assert.equal(await provider(HOST, 'a/b'), undefined);
  writeFileSync(path, JSON.stringify({ auths: { [HOST]: { username: 'u1', password: 'p1' } } }));
  assert.deepEqual(await provider(HOST, 'a/b'), { username: 'u1', password: 'p1' });
  writeFileSync(path, JSON.stringify({ auths: { [HOST]: { auth: b64('u2:p2') } } }));
  assert.deepEqual(await provider(HOST, 'a/b'), { username: 'u2', password: 'p2' });
});

test('a malformed credential file fails with InvalidArgumentError that does not quote the file', async () => {
  const path = join(dir, 'bad.json');
  writeFileSync(path, '{"auths": {"h": {"password": "TopSecret-42"}');
  for (const provider of [credJsonCredentials(path), dockerConfigCredentials({ path })]) {
    await assert.rejects(provider('h', 'r'), (e: unknown) => {
      assert.ok(e instanceof InvalidArgumentError);
      assert.match(e.message, /not valid JSON/);
      assert.doesNotMatch(e.message, /TopSecret/);
      return true;
    });
  }
});

test('dockerConfigPath() honours an explicit path, DOCKER_CONFIG, then HOME', () => {
  assert.equal(dockerConfigPath({ path: '/x/c.json' }), '/x/c.json');
  assert.equal(dockerConfigPath({ env: { DOCKER_CONFIG: '/etc/dc', HOME: '/h' } }), '/etc/dc/config.json');
  assert.equal(dockerConfigPath({ env: { HOME: '/home/u' } }), '/home/u/.docker/config.json');
});

test('dockerConfigCredentials() reads auths keyed by host or URL, Docker Hub under any of its names', async () => {
  const configDir = join(dir, 'docker');
  const provider = dockerConfigCredentials({ env: { DOCKER_CONFIG: configDir } });
  assert.equal(await provider(HOST, 'a'), undefined, 'no file yet');
  mkdirSync(configDir, { recursive: true });
  writeFileSync(
    join(configDir, 'config.json'),
    JSON.stringify({
      auths: {
        'https://index.docker.io/v1/': { auth: b64('hub:hubpass') },
        [`https://${HOST}/v2/`]: { auth: b64('u:p:with:colons') },
        'plain.example': { username: 'pu', password: 'pp' },
        'registry-1.docker.io': { username: 'exact', password: 'e' },
      },
    }),
  );
  assert.deepEqual(await provider(HOST, 'a'), { username: 'u', password: 'p:with:colons' });
  assert.deepEqual(await provider('plain.example', 'x'), { username: 'pu', password: 'pp' });
  assert.deepEqual(await provider('docker.io', 'library/alpine'), { username: 'hub', password: 'hubpass' });
  assert.deepEqual(await provider('registry-1.docker.io', 'library/alpine'), { username: 'exact', password: 'e' }, 'exact key beats alias');
  assert.equal(await provider('unknown.example', 'x'), undefined);
  assert.equal(normalizeConfigKey('HTTPS://Reg.Example:5000/v1/'), 'reg.example:5000');
});

test('dockerConfigCredentials() runs credHelpers and credsStore programs', async () => {
  const bin = join(dir, 'bin');
  mkdirSync(bin, { recursive: true });
  const helper = join(bin, 'docker-credential-obdtest');
  writeFileSync(
    helper,
    '#!/bin/sh\nread server\nif [ "$server" = "helped.example" ]; then printf \'{"ServerURL":"%s","Username":"hu","Secret":"hs"}\' "$server"; else echo "credentials not found in native keychain"; exit 1; fi\n',
  );
  chmodSync(helper, 0o755);
  const oldPath = process.env['PATH'];
  process.env['PATH'] = `${bin}:${oldPath ?? ''}`;
  try {
    const path = join(dir, 'helpers.json');
    writeFileSync(path, JSON.stringify({ credHelpers: { 'helped.example': 'obdtest' }, credsStore: 'obdtest', auths: { 'fallback.example': { auth: b64('f:g') } } }));
    const provider = dockerConfigCredentials({ path });
    assert.deepEqual(await provider('helped.example', 'r'), { username: 'hu', password: 'hs' });
    assert.deepEqual(await provider('fallback.example', 'r'), { username: 'f', password: 'g' }, 'store miss falls back to auths');
    writeFileSync(path, JSON.stringify({ credsStore: 'missing-helper-xyz' }));
    await assert.rejects(provider('x.example', 'r'), (e: unknown) => e instanceof InvalidArgumentError && /not found in PATH/.test(e.message));
  } finally {
    process.env['PATH'] = oldPath;
  }
});

test('staticCredentials() and chainCredentials() answer in order', async () => {
  const chain = chainCredentials(staticCredentials({ 'a.example': { username: 'a', password: '1' } }), staticCredentials({ 'docker.io': { username: 'd', password: '2' } }));
  assert.deepEqual(await chain('a.example', 'r'), { username: 'a', password: '1' });
  assert.deepEqual(await chain('registry-1.docker.io', 'r'), { username: 'd', password: '2' });
  assert.equal(await chain('b.example', 'r'), undefined);
});
