import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../main.ts';
import { memoryIo } from '../io.ts';

async function withConfig(config: unknown, fn: (file: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-sncli-'));
  try {
    const file = join(dir, 'config.json');
    await writeFile(file, JSON.stringify(config));
    await fn(file);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

test('`obd snapshotter CONFIG` reads the config file named by its argument, as upstream', async () => {
  await withConfig({ root: '/nonexistent-obd-root', address: '' }, async (file) => {
    const io = memoryIo();
    assert.equal(await main(['snapshotter', file], io), 2);
    assert.match(io.stderr, /config address is empty/);
  });
});

test('`obd snapshotter --config CONFIG` reads the same file', async () => {
  await withConfig({ root: '', address: '/nonexistent-obd-dir/sn.sock' }, async (file) => {
    const io = memoryIo();
    assert.equal(await main(['snapshotter', '--config', file], io), 2);
    assert.match(io.stderr, /config root is empty/);
  });
});

test('`obd snapshotter` rejects a config given twice and a second argument', async () => {
  const twice = memoryIo();
  assert.equal(await main(['snapshotter', 'a.json', '--config', 'b.json'], twice), 2);
  assert.match(twice.stderr, /config given twice \(a\.json and --config b\.json\)/);
  const two = memoryIo();
  assert.equal(await main(['snapshotter', 'a.json', 'b.json'], two), 2);
  assert.match(two.stderr, /Expected 0 to 1 arguments, got 2/);
});
