import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Metastore } from './metastore.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../io/errors.ts';

async function withStore(fn: (ms: Metastore, file: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-metastore-'));
  const file = join(dir, 'metadata.db');
  const ms = Metastore.open(file);
  try {
    await fn(ms, file);
  } finally {
    await ms.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test('withTransaction() rolls back everything a failing callback did', async () => {
  await withStore(async (ms) => {
    await assert.rejects(
      ms.withTransaction(async (tx) => {
        tx.createSnapshot({ kind: 'active', key: 'a', parent: '' });
        await new Promise((r) => setTimeout(r, 5));
        throw new Error('boom');
      }, { writable: true }),
      /boom/,
    );
    assert.deepEqual(await ms.withTransaction((tx) => tx.list()), []);
  });
});

test('withTransaction() never interleaves transactions and rejects writes in read-only ones', async () => {
  await withStore(async (ms) => {
    const order: string[] = [];
    await Promise.all([
      ms.withTransaction(async (tx) => {
        order.push('1 start');
        tx.createSnapshot({ kind: 'active', key: 'a', parent: '' });
        await new Promise((r) => setTimeout(r, 20));
        order.push('1 end');
      }, { writable: true }),
      ms.withTransaction((tx) => {
        order.push(`2 sees ${tx.list().length}`);
      }),
    ]);
    assert.deepEqual(order, ['1 start', '1 end', '2 sees 1']);
    await assert.rejects(ms.withTransaction((tx) => tx.remove('a')), TypeError);
  });
});

test('IDs grow monotonically, survive reopening, and parent chains are nearest first', async () => {
  await withStore(async (ms, file) => {
    const chain = await ms.withTransaction((tx) => {
      tx.createSnapshot({ kind: 'active', key: 'a', parent: '' });
      tx.commitActive({ key: 'a', name: 'A', usage: { size: 4096, inodes: 1 } });
      tx.createSnapshot({ kind: 'active', key: 'b', parent: 'A' });
      tx.commitActive({ key: 'b', name: 'B', usage: { size: 0, inodes: 1 }, labels: { x: 'y' } });
      tx.createSnapshot({ kind: 'active', key: 'gone', parent: '' });
      tx.remove('gone');
      return tx.createSnapshot({ kind: 'view', key: 'v', parent: 'B' });
    }, { writable: true });
    assert.deepEqual(chain, { id: '4', kind: 'view', parentIds: ['2', '1'] });
    await ms.close();
    const again = Metastore.open(file);
    try {
      const got = await again.withTransaction((tx) => ({ a: tx.getInfo('A'), b: tx.getInfo('B').info.labels, kids: tx.childKeys('B') }));
      assert.deepEqual(got.a.usage, { size: 4096, inodes: 1 });
      assert.equal(got.a.id, '1');
      assert.deepEqual(got.b, { x: 'y' });
      assert.deepEqual(got.kids, ['v']);
      const next = await again.withTransaction((tx) => tx.createSnapshot({ kind: 'active', key: 'n', parent: '' }), { writable: true });
      assert.equal(next.id, '5', 'the ID of a removed snapshot is not reused');
    } finally {
      await again.close();
    }
  });
});

test('Metastore.open() refuses a database held by another owner', async () => {
  await withStore(async (_ms, file) => {
    assert.throws(() => Metastore.open(file), FailedPreconditionError);
  });
});

test('labels over 4096 bytes per pair are InvalidArgument', async () => {
  await withStore(async (ms) => {
    await assert.rejects(
      ms.withTransaction((tx) => tx.createSnapshot({ kind: 'active', key: 'a', parent: '', labels: { ['k'.repeat(4000)]: 'v'.repeat(97) } }), { writable: true }),
      InvalidArgumentError,
    );
    await ms.withTransaction((tx) => tx.createSnapshot({ kind: 'active', key: 'a', parent: '', labels: { ['k'.repeat(4000)]: 'v'.repeat(96) } }), { writable: true });
  });
});
