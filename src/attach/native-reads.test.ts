/**
 * The native FUSE READ path (src/fuse/README.md, "Native READ path") against the
 * JavaScript stack it replaces, over a real mount (root, /dev/fuse): a three-layer
 * stack — tar(ZFile lz4, 4 KiB blocks, CRCs), ZFile zstd 16 KiB blocks without CRCs
 * with a trimmed range, and a plain LSMT layer — whose writes overlap at sector (not
 * block) granularity. Aligned reads must be answered by the C threads (no device
 * request reaches the serving thread) with the stack's bytes; whatever the C threads
 * cannot answer must still be answered right, by the serving thread.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, openSync, readSync, writeSync, closeSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import diagnostics from 'node:diagnostics_channel';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createWritableLayer } from '../formats/lsmt/writable-layer.ts';
import { commitFile } from '../formats/lsmt/commit-files.ts';
import type { CommitFileOptions } from '../formats/lsmt/commit-files.ts';
import { openDevice } from '../device/open-device.ts';
import { parseDeviceConfig } from '../image/device-config.ts';
import type { BlockDevice } from '../io/block-device.ts';
import { serveFuse } from '../fuse/serve-fuse.ts';
import { openFuse } from '../fuse/open-fuse.ts';
import { fuseFileConfig, serveFuseFd } from '../fuse/serve-fuse-fd.ts';
import type { FuseMount } from '../fuse/serve-fuse.ts';
import type { FuseExtentTable, FuseLocalReads } from '../fuse/serve-fuse-fd.ts';
import { localReadsFor } from './local-reads.ts';
import { startFuseWatchdog } from '../../test/support/fuse-watchdog.ts';
import { pseudoRandom } from '../../test/support/sample-layers.ts';

const skip = process.getuid?.() !== 0 || !existsSync('/dev/fuse') ? 'needs root and /dev/fuse' : false;
const T = { timeout: 60_000, skip };
const MiB = 2 ** 20;

let dir = '';
let device: BlockDevice | undefined;
let reads: FuseLocalReads | undefined;
let fuse: FuseMount | undefined;
let file: FileHandle | undefined;
let watchdog: { stop(): void } | undefined;
/** Device READs the serving thread ran (the C threads publish none). */
const served: Array<{ op: string; offset: number; length: number; result: number }> = [];
const onRequest = (m: unknown): void => void served.push(m as (typeof served)[number]);

async function layer(name: string, edits: Array<[number, number, number] | [number, number]>, options: CommitFileOptions): Promise<string> {
  const data = join(dir, `${name}.data`);
  const index = join(dir, `${name}.index`);
  const rw = await createWritableLayer({ data, index, virtualSize: 64 * MiB });
  for (const e of edits) {
    if (e.length === 3) await rw.write(pseudoRandom(e[2], e[1]), e[0]);
    else await rw.trim(e[0], e[1]);
  }
  await rw.close();
  const out = join(dir, `${name}.blob`);
  await commitFile({ data, index }, out, options);
  return out;
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), 'obd-native-reads-'));
  watchdog = startFuseWatchdog(dir, 120);
  const bottom = await layer('bottom', [[0, 8 * MiB, 1], [20 * MiB, MiB, 2], [40 * MiB + 512, 3 * 512, 3]], { zfile: { algorithm: 'lz4', blockSize: 4096, verify: true, rewriteHeader: true }, tar: true });
  const middle = await layer('middle', [[4 * MiB + 3 * 512, 128 * 1024 + 512, 4], [6 * MiB, 64 * 1024], [30 * MiB, 300 * 512, 5]], { zfile: { algorithm: 'zstd', blockSize: 16384, verify: false } });
  const top = await layer('top', [[7 * MiB + 512, 40 * 512, 6], [6 * MiB + 8192, 4096, 7]], {});
  const cfg = parseDeviceConfig(JSON.stringify({ lowers: [{ file: bottom }, { file: middle }, { file: top }] }), dir);
  device = await openDevice(cfg);
  reads = await localReadsFor(cfg);
  diagnostics.subscribe('obd:fuse:request', onRequest);
  const mountpoint = mkdtempSync(join(dir, 'mnt-'));
  fuse = await serveFuse(device, { mountpoint, workers: 2, ...(reads !== undefined ? { localReads: reads } : {}) });
  file = await open(fuse.path, 'r');
});

after(async () => {
  diagnostics.unsubscribe('obd:fuse:request', onRequest);
  await file?.close().catch(() => {});
  await fuse?.unmount({ abortAfterMs: 2000 }).catch(() => {});
  await device?.close().catch(() => {});
  watchdog?.stop();
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

async function viaFuse(offset: number, length: number): Promise<Uint8Array> {
  const buf = new Uint8Array(length);
  const { bytesRead } = await (file as FileHandle).read(buf, 0, length, offset);
  return buf.subarray(0, bytesRead);
}

/** The stack's bytes (the LSMT stack reads whole sectors: widen, then cut). */
async function viaDevice(offset: number, length: number): Promise<Uint8Array> {
  const dev = device as BlockDevice;
  const end = Math.min(offset + length, dev.size);
  if (end <= offset) return new Uint8Array(0);
  const from = offset - (offset % 512);
  const buf = new Uint8Array(Math.ceil((end - from) / 512) * 512);
  await dev.readAt(buf, from);
  return buf.subarray(offset - from, end - from);
}

test('localReadsFor() flattens the stack: three sources, extents sorted and within them', T, () => {
  const table = reads?.extents as FuseExtentTable;
  assert.ok(table !== undefined, 'no extent table');
  assert.deepEqual(
    table.sources.map((s) => s.zfile?.algorithm ?? 'plain'),
    ['plain', 'zstd', 'lz4'], // top first, as the merged index tags them
  );
  assert.ok((table.sources[2] as { base: number }).base > 0, 'the tar wrapper offset is missing');
  assert.ok(table.zeroed.includes(1), 'the trimmed range is not a zeroed extent');
  for (let i = 1; i < table.offset.length; i++) {
    assert.ok((table.offset[i] as number) >= (table.offset[i - 1] as number) + (table.length[i - 1] as number), `extent ${i} overlaps`);
  }
});

test('aligned reads are answered by the native threads with the stack’s bytes', T, async () => {
  served.length = 0;
  const cases: Array<[number, number]> = [
    [0, 4096],
    [4 * MiB, 256 * 1024], // middle over bottom, sector-granular edges
    [4 * MiB + 3 * 512, 512],
    [6 * MiB - 4096, 80 * 1024], // trimmed range with a top write inside
    [7 * MiB, 64 * 512],
    [8 * MiB - 2048, 8192], // data then a gap
    [12 * MiB, 768 * 1024], // a gap: zeros (the kernel splits a request at max_pages pages of an unaligned user buffer)
    [30 * MiB - 512, 302 * 512],
    [40 * MiB, 4096],
    [64 * MiB - 4096, 8192], // crosses the end: short read
  ];
  let seed = 42;
  for (let i = 0; i < 150; i++) {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    const offset = (seed % (64 * 2048)) * 512;
    cases.push([offset, 512 * (1 + (seed % 512))]);
  }
  for (const [offset, length] of cases) {
    const got = await viaFuse(offset, length);
    assert.deepEqual(got, await viaDevice(offset, length), `read of ${length} bytes at ${offset}`);
  }
  assert.deepEqual(served.filter((r) => r.op === 'READ'), [], 'READs reached the serving thread');
});

test('an unaligned read goes to the serving thread and is answered right', T, async () => {
  served.length = 0;
  const got = await viaFuse(4 * MiB + 1000, 5000);
  assert.deepEqual(got, await viaDevice(4 * MiB + 1000, 5000));
  assert.ok(served.some((r) => r.op === 'READ'), 'the unaligned READ did not reach the serving thread');
});

test('a block failing its CRC is handed to the serving thread, which reports EIO; its neighbours still read', T, async () => {
  const table = reads?.extents as FuseExtentTable;
  const lz4 = table.sources[2] as NonNullable<FuseExtentTable['sources'][number]>;
  const z = lz4.zfile as NonNullable<typeof lz4.zfile>;
  // Virtual 1 MiB lives in the bottom layer only: find its block in the ZFile.
  const sector = MiB / 512;
  let e = 0;
  while (!((table.offset[e] as number) <= sector && sector < (table.offset[e] as number) + (table.length[e] as number))) e++;
  assert.equal(table.source[e], 2);
  const pos = ((table.moffset[e] as number) + sector - (table.offset[e] as number)) * 512;
  const block = Math.floor(pos / z.blockSize);
  const at = lz4.base + (z.starts[block] as number) + 1;
  const fd = openSync(lz4.path, 'r+');
  const byte = new Uint8Array(1);
  try {
    readSync(fd, byte, 0, 1, at);
    writeSync(fd, Uint8Array.of((byte[0] as number) ^ 0xff), 0, 1, at);
    served.length = 0;
    await assert.rejects(viaFuse(MiB - (pos % z.blockSize), 4096), { code: 'EIO' });
    assert.ok(served.some((r) => r.op === 'READ' && r.result < 0), 'the serving thread did not see the failed READ');
    const next = MiB - (pos % z.blockSize) + 4096;
    assert.deepEqual(await viaFuse(next, 4096), await viaDevice(next, 4096));
  } finally {
    writeSync(fd, byte, 0, 1, at);
    closeSync(fd);
  }
  assert.deepEqual(await viaFuse(MiB, 4096), await viaDevice(MiB, 4096));
});

test('stop() before the mount ends the native threads: done resolves "stopped"', T, async () => {
  const dev = device as BlockDevice;
  const fuseFd = await openFuse(mkdtempSync(join(dir, 'unmounted-')));
  try {
    const service = await serveFuseFd(dev, { fd: fuseFd.fd, config: fuseFileConfig(dev), workers: 3, localReads: reads as FuseLocalReads });
    service.stop();
    const end = await Promise.race([service.done, new Promise((r) => setTimeout(r, 5000, 'timeout'))]);
    assert.equal(end, 'stopped');
  } finally {
    fuseFd.close();
  }
});

test('a table whose files changed size is refused: the reader workers serve instead', T, async () => {
  const dev = device as BlockDevice;
  const table = reads?.extents as FuseExtentTable;
  const stale: FuseLocalReads = { ...(reads as FuseLocalReads), extents: { ...table, sources: table.sources.map((s) => ({ ...s, fileSize: s.fileSize + 1 })) } };
  const mountpoint = mkdtempSync(join(dir, 'stale-'));
  const mount = await serveFuse(dev, { mountpoint, workers: 2, localReads: stale });
  try {
    const h = await open(mount.path, 'r');
    try {
      const buf = new Uint8Array(65536);
      await h.read(buf, 0, buf.length, 4 * MiB);
      assert.deepEqual(buf, await viaDevice(4 * MiB, buf.length));
    } finally {
      await h.close();
    }
  } finally {
    await mount.unmount({ abortAfterMs: 2000 });
  }
});
