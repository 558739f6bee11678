import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DataCorruptionError, UnsupportedError } from '../io/errors.ts';
import { DigestVerifier } from './digest-verifier.ts';
import { digestOf, isDigest } from './digest.ts';

function source(...chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  return new ReadableStream({
    start(c) {
      for (const x of chunks) c.enqueue(x);
      c.close();
    },
  });
}

async function drain(s: ReadableStream<Uint8Array>): Promise<number> {
  let n = 0;
  for await (const c of s) n += c.length;
  return n;
}

const a = new TextEncoder().encode('hello ');
const b = new TextEncoder().encode('world');
const whole = new TextEncoder().encode('hello world');

test('DigestVerifier passes matching content through unchanged', async () => {
  const v = new DigestVerifier({ digest: digestOf(whole), size: whole.length });
  assert.equal(await drain(source(a, b).pipeThrough(v)), whole.length);
  assert.equal(v.bytes, whole.length);
  const v512 = new DigestVerifier({ digest: digestOf(whole, 'sha512') });
  assert.equal(await drain(source(whole).pipeThrough(v512)), whole.length);
});

test('DigestVerifier fails at EOF on a wrong digest, after delivering the bytes', async () => {
  const reader = source(a, b).pipeThrough(new DigestVerifier({ digest: digestOf(a) })).getReader();
  assert.deepEqual((await reader.read()).value, a);
  assert.deepEqual((await reader.read()).value, b);
  await assert.rejects(reader.read(), (e: unknown) => e instanceof DataCorruptionError && /content hashes to sha256:/.test(e.message));
});

test('DigestVerifier fails on short and on long content', async () => {
  await assert.rejects(drain(source(a).pipeThrough(new DigestVerifier({ digest: digestOf(a), size: 7 }))), /got 6 bytes, expected 7/);
  await assert.rejects(drain(source(a, b).pipeThrough(new DigestVerifier({ digest: digestOf(whole), size: 6 }))), /more than the expected 6 bytes/);
});

test('DigestVerifier refuses algorithms it cannot verify', () => {
  assert.throws(() => new DigestVerifier({ digest: `blake3:${'a'.repeat(64)}` }), UnsupportedError);
  assert.equal(isDigest(`blake3:${'a'.repeat(64)}`), true);
  assert.equal(isDigest(`sha256:${'a'.repeat(63)}`), false);
  assert.equal(isDigest(`sha256:${'A'.repeat(64)}`), false);
});
