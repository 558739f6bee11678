/**
 * The snapshotter conformance suite over the wire: `createSnapshotter` served by
 * `startSnapshotterServer` on a unix socket, driven through `createSnapshotterClient`
 * (gRPC, containerd's snapshots API), so every error code and field crosses the
 * protobuf boundary. Plus the adapter's own behaviour: socket mode, stale sockets,
 * status codes seen by a raw client, List batching.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createSnapshotter } from '../src/snapshotter/snapshotter.ts';
import { startSnapshotterServer } from '../src/snapshotter/grpc-service.ts';
import { createSnapshotterClient } from '../src/snapshotter/grpc-client.ts';
import { snapshotsService } from '../src/snapshotter/_proto.ts';
import { Metastore } from '../src/snapshotter/metastore.ts';
import { AlreadyExistsError } from '../src/io/errors.ts';
import { snapshotterSuite } from './suites/snapshotter-suite.ts';

snapshotterSuite(
  'gRPC',
  async (root) => {
    const backend = await createSnapshotter(join(root, 'state'));
    const server = await startSnapshotterServer({ snapshotter: backend, address: join(root, 'run', 'obd.sock') });
    const snapshotter = createSnapshotterClient(server.address, { timeoutMs: 30_000 });
    return {
      snapshotter,
      cleanup: async () => {
        await snapshotter.close();
        await server.close();
        await backend.close();
      },
    };
  },
  { manyLayers: 32 },
);

async function withServer(fn: (ctx: { address: string; dir: string }) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'obd-grpc-'));
  const backend = await createSnapshotter(join(dir, 'state'));
  const address = join(dir, 'run', 'sub', 'obd.sock');
  const server = await startSnapshotterServer({ snapshotter: backend, address });
  try {
    await fn({ address, dir });
  } finally {
    await server.close();
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test('startSnapshotterServer() listens on a 0600 socket in a 0700 directory and removes it on close', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-grpc-'));
  const backend = await createSnapshotter(join(dir, 'state'));
  const address = join(dir, 'run', 'obd.sock');
  const server = await startSnapshotterServer({ snapshotter: backend, address });
  try {
    assert.equal((await stat(address)).mode & 0o777, 0o600);
    assert.equal((await stat(join(dir, 'run'))).mode & 0o777, 0o700);
  } finally {
    await server.close();
    await server.close();
    await backend.close();
  }
  await assert.rejects(stat(address), { code: 'ENOENT' });
  await rm(dir, { recursive: true, force: true });
});

test('startSnapshotterServer() replaces a stale socket but refuses to delete other files', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-grpc-'));
  const backend = await createSnapshotter(join(dir, 'state'));
  const stale = join(dir, 'stale.sock');
  await writeFile(join(dir, 'plain'), 'x');
  try {
    // A socket left by a crashed daemon: a child listens, then dies by SIGKILL (nothing unlinks it).
    const child = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(stale)}, () => console.log('up'))`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await once(child.stdout, 'data');
    child.kill('SIGKILL');
    await once(child, 'exit');
    assert.ok((await lstat(stale)).isSocket());
    const server = await startSnapshotterServer({ snapshotter: backend, address: stale });
    const client = createSnapshotterClient(stale);
    await client.prepare('k', '');
    assert.equal((await client.stat('k')).kind, 'active');
    await client.close();
    await server.close();
    await assert.rejects(startSnapshotterServer({ snapshotter: backend, address: join(dir, 'plain') }), AlreadyExistsError);
    assert.equal(await readFile(join(dir, 'plain'), 'utf8'), 'x');
  } finally {
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('the Snapshots service answers containerd status codes to a raw client', async () => {
  await withServer(async ({ address }) => {
    const Client = snapshotsService();
    const raw = new Client(`unix:${address}`, grpc.credentials.createInsecure()) as unknown as Record<
      string,
      (req: unknown, cb: (e: grpc.ServiceError | null, res: unknown) => void) => void
    > & { close(): void };
    const call = (m: string, req: unknown): Promise<unknown> =>
      new Promise((resolve, reject) => raw[m]!.call(raw, req, (e, r) => (e ? reject(e) : resolve(r))));
    try {
      await assert.rejects(call('Stat', { key: 'nope' }), { code: grpc.status.NOT_FOUND });
      const prep = (await call('Prepare', { key: 'a', parent: '', labels: { x: 'y' } })) as { mounts: { type: string; options: string[] }[] };
      assert.equal(prep.mounts[0]?.type, 'bind');
      assert.deepEqual(prep.mounts[0]?.options, ['rw', 'rbind']);
      await assert.rejects(call('Prepare', { key: 'a', parent: '' }), { code: grpc.status.ALREADY_EXISTS });
      await assert.rejects(call('Prepare', { key: 'b', parent: 'a' }), { code: grpc.status.INVALID_ARGUMENT });
      await call('Commit', { name: 'c', key: 'a' });
      await assert.rejects(call('Mounts', { key: 'c' }), { code: grpc.status.FAILED_PRECONDITION });
      await call('Prepare', { key: 'child', parent: 'c' });
      await assert.rejects(call('Remove', { key: 'c' }), { code: grpc.status.FAILED_PRECONDITION });
      await assert.rejects(call('Update', { info: { name: 'c' }, updateMask: { paths: ['kind'] } }), { code: grpc.status.INVALID_ARGUMENT });
      const st = (await call('Stat', { key: 'child' })) as { info: { kind: string; parent: string; createdAt: { seconds: number } } };
      assert.equal(st.info.kind, 'ACTIVE');
      assert.equal(st.info.parent, 'c');
      assert.ok(Math.abs(st.info.createdAt.seconds - Date.now() / 1000) < 60);
      const usage = (await call('Usage', { key: 'c' })) as { size: number; inodes: number };
      assert.equal(usage.inodes, 1);
    } finally {
      raw.close();
    }
  });
});

test('List streams every snapshot in batches of at most 100', async () => {
  await withServer(async ({ address }) => {
    const client = createSnapshotterClient(address);
    for (let i = 0; i < 250; i++) await client.view(`v${i}`, '');
    const Client = snapshotsService();
    const raw = new Client(`unix:${address}`, grpc.credentials.createInsecure()) as unknown as {
      List(req: unknown): grpc.ClientReadableStream<{ info: unknown[] }>;
      close(): void;
    };
    const sizes: number[] = [];
    for await (const msg of raw.List({ filters: [] })) sizes.push((msg as { info: unknown[] }).info.length);
    raw.close();
    assert.deepEqual(sizes, [100, 100, 50]);
    let n = 0;
    await client.walk(() => {
      n++;
    }, ['name~=^v1']);
    assert.equal(n, 1 + 10 + 100, 'v1, v10-v19, v100-v199');
    await client.close();
  });
});

test('List with a paused client that cancels mid-stream ends the call and the server keeps serving', { timeout: 60_000 }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-grpc-'));
  // 3000 records with 2 KB labels (30 batches, 6 MB), written straight into the metadata
  // store: more batches than grpc-js queues before write() asks for a drain.
  await mkdir(join(dir, 'state'), { recursive: true });
  const ms = Metastore.open(join(dir, 'state', 'metadata.db'));
  await ms.withTransaction((tx) => {
    for (let i = 0; i < 3000; i++) tx.createSnapshot({ kind: 'view', key: `v${i}`, parent: '', labels: { big: 'x'.repeat(2000) } });
  }, { writable: true });
  await ms.close();
  const backend = await createSnapshotter(join(dir, 'state'));
  const server = await startSnapshotterServer({ snapshotter: backend, address: join(dir, 'obd.sock') });
  const client = createSnapshotterClient(server.address);
  try {
    const Client = snapshotsService();
    const raw = new Client(`unix:${server.address}`, grpc.credentials.createInsecure()) as unknown as {
      List(req: unknown): grpc.ClientReadableStream<{ info: unknown[] }>;
      close(): void;
    };
    const stream = raw.List({ filters: [] });
    stream.pause();
    await new Promise((r) => setTimeout(r, 200)); // the server fills its buffer and waits
    let got = 0;
    await new Promise<void>((resolve) => {
      stream.on('data', () => {
        got++;
        stream.cancel();
      });
      stream.on('error', () => resolve());
      stream.on('end', () => resolve());
      stream.resume();
    });
    raw.close();
    assert.ok(got >= 1 && got < 30, `read ${got} of 30 batches before cancelling`);
    assert.equal((await client.stat('v7')).kind, 'view', 'the server still answers');
    const t0 = Date.now();
    await client.close();
    await server.close({ graceMs: 5000 });
    assert.ok(Date.now() - t0 < 4000, 'no call is left hanging');
  } finally {
    await server.close();
    await backend.close();
    await rm(dir, { recursive: true, force: true });
  }
});
