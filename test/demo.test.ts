/** The README's main job and the kernel-free self test run to completion and clean up. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';

test('obd demo builds, stores, mounts lazily, reads and reports the fetched share', { timeout: 300_000 }, async () => {
  const io = memoryIo();
  assert.equal(await main(['demo'], io), 0, io.stderr);
  assert.match(io.stdout, /fetched [\d.]+ MiB of the [\d.]+ MiB layer blob \([\d.]+%\)/);
  assert.match(io.stdout, /demo: OK/);
  assert.ok(!readFileSync('/proc/mounts', 'utf8').includes('obd-quickstart'));
});

test('obd selftest round-trips the formats without the kernel', { timeout: 120_000 }, async () => {
  const io = memoryIo();
  assert.equal(await main(['selftest'], io), 0, io.stderr);
  assert.match(io.stdout, /demo: OK/);
});
