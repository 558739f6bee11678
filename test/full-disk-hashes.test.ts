/**
 * The documented sha256 of whole virtual disks (vectors README §3-§5): the 64 GiB
 * apply stacks are hashed end to end. Unmapped 4 MiB chunks are hashed from a shared
 * zero buffer without reading; every mapped chunk is read through the stacked device.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDevice } from '../src/device/open-device.ts';
import { parseDeviceConfig } from '../src/image/device-config.ts';
import type { LsmtStack } from '../src/formats/lsmt/stack.ts';
import { vector } from './support/shared.ts';

const CHUNK = 4 << 20;

async function hashDevice(stack: LsmtStack): Promise<string> {
  const mapped = new Set<number>();
  for (const s of stack.segments()) {
    if (s.zeroed) continue;
    const first = Math.floor((s.offset * 512) / CHUNK);
    const last = Math.floor(((s.offset + s.length) * 512 - 1) / CHUNK);
    for (let c = first; c <= last; c++) mapped.add(c);
  }
  const h = createHash('sha256');
  const zero = new Uint8Array(CHUNK);
  const buf = new Uint8Array(CHUNK);
  for (let c = 0; c * CHUNK < stack.size; c++) {
    const n = Math.min(CHUNK, stack.size - c * CHUNK);
    if (!mapped.has(c)) {
      h.update(zero.subarray(0, n));
      continue;
    }
    await stack.readAt(buf.subarray(0, n), c * CHUNK);
    h.update(buf.subarray(0, n));
  }
  return h.digest('hex');
}

function ext4Base(dir: string): string {
  const tar = gunzipSync(readFileSync(vector('apply', 'ext4_64.tar.gz')));
  const size = parseInt(new TextDecoder().decode(tar.subarray(124, 136)).replace(/\0.*$/s, '').trim(), 8);
  const path = join(dir, 'ext4_64');
  writeFileSync(path, tar.subarray(512, 512 + size));
  return path;
}

test('the 64 GiB apply stacks hash to the documented full-disk sha256', { timeout: 900_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'obd-full-'));
  try {
    const base = ext4Base(dir);
    const cases: Array<[string[], string]> = [
      [[base], 'e5f5b67aca37084f505d8af3570668fcf098b96ccb409e87caea98d4056a927d'],
      [[base, vector('apply', 'A1.lz4.commit')], '08daa5382beaeffd48401ca1518b437e1bf684d6b1aad4cb05b0b86555920d6f'],
      [[base, vector('apply', 'A1.lz4.commit'), vector('apply', 'A2.lz4.commit')], '1b8c72a4ae608b6afe0ecac38224db19c1d22ad868852b57743c4692e5c148fe'],
    ];
    for (const [files, want] of cases) {
      const stack = await openDevice(parseDeviceConfig(JSON.stringify({ lowers: files.map((file) => ({ file })) }), dir));
      try {
        assert.equal(stack.size, 64 * 2 ** 30);
        assert.equal(await hashDevice(stack), want, files.join(' + '));
      } finally {
        await stack.close();
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
