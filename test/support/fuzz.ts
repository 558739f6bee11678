/**
 * Seeded mutation fuzzing of every blob kind the formats read (issue 2, robustness).
 *
 * Each case takes a real vector, mutates it (byte flips, random bytes, truncation,
 * insertion, deletion; biased toward headers, trailers and indexes where the parsers
 * live) and opens it the way the device does: tar → ZFile → LSMT, then reads it.
 * Every input must end in a typed `ObdError` or a correct read; a crash (any other
 * exception), a hang (per-input time limit) or a read outside the blob is a failure.
 * "Correct" is checkable where the format protects its bytes: a ZFile with block CRCs
 * and digests must return exactly the original content or fail.
 */
import { readFileSync } from 'node:fs';
import { ObdError } from '../../src/io/errors.ts';
import type { BlobReader } from '../../src/io/blob-reader.ts';
import { MemoryReader } from '../../src/io/memory-reader.ts';
import { openLayerBlob } from '../../src/formats/open-layer-blob.ts';
import { openRoLayer } from '../../src/formats/lsmt/ro-layer.ts';
import { ZFileReader } from '../../src/formats/zfile/reader.ts';
import { vector, sha256 } from './shared.ts';

export interface FuzzSeed {
  name: string;
  bytes: Uint8Array;
  kind: 'zfile' | 'layer';
  /** sha256 of the decoded content when the format fully protects it (CRC + digests). */
  protectedContent?: string;
}

export function loadSeeds(): FuzzSeed[] {
  const z = (n: string): Uint8Array => new Uint8Array(readFileSync(vector('zfile', n)));
  const l = (...p: string[]): Uint8Array => new Uint8Array(readFileSync(vector(...p)));
  return [
    { name: 'zf_768k_lz4_bs64_crc', bytes: z('zf_768k_lz4_bs64_crc.zfile'), kind: 'zfile', protectedContent: '470e2760d00ddcd15d50b62c361ebfc503ae230d8760287299044189cb6e5196' },
    { name: 'zf_odd_zstd_bs16_crc', bytes: z('zf_odd_zstd_bs16_crc.zfile'), kind: 'zfile', protectedContent: '776d984db743613a9ad6df73255b86c569d261867d027379c8a321e7dbed11ee' },
    { name: 'zf_lz4_bs32_nocrc', bytes: z('zf_lz4_bs32_nocrc.zfile'), kind: 'zfile' },
    { name: 'zf_lz4_bs4_crc.tar', bytes: z('zf_lz4_bs4_crc.zfile.tar'), kind: 'zfile' },
    { name: 'L1.commit', bytes: l('lsmt', 'L1.commit'), kind: 'layer' },
    { name: 'L2.commit', bytes: l('lsmt', 'L2.commit'), kind: 'layer' },
    { name: 'L1.sealed', bytes: l('lsmt', 'L1.sealed'), kind: 'layer' },
    { name: 'L2.lz4.commit', bytes: l('lsmt', 'L2.lz4.commit'), kind: 'layer' },
    { name: 'L1.zstd.commit', bytes: l('lsmt', 'L1.zstd.commit'), kind: 'layer' },
    { name: 'L1.lz4.commit.tar', bytes: l('lsmt', 'L1.lz4.commit.tar'), kind: 'layer' },
    { name: 'L1L2.merged.lz4', bytes: l('stack', 'L1L2.merged.lz4'), kind: 'layer' },
  ];
}

/** xorshift32: small, seeded, reproducible. */
export class Rng {
  #x: number;
  constructor(seed: number) {
    this.#x = seed >>> 0 || 0x9e3779b9;
  }
  next(): number {
    let x = this.#x;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#x = x >>> 0;
    return this.#x;
  }
  below(n: number): number {
    return n <= 0 ? 0 : this.next() % n;
  }
}

/** Picks a position biased toward the structures at both ends of a blob. */
function position(rng: Rng, size: number): number {
  const r = rng.below(10);
  if (r < 3) return rng.below(Math.min(size, 1536 + 512)); // tar headers, ZFile/LSMT header
  if (r < 6) return Math.max(0, size - 1 - rng.below(Math.min(size, 8192 + 4096))); // index + trailer
  return rng.below(size);
}

export function mutate(seed: Uint8Array, rng: Rng): { bytes: Uint8Array; what: string } {
  let bytes = seed.slice();
  const steps = 1 + rng.below(3);
  const what: string[] = [];
  for (let s = 0; s < steps && bytes.length > 0; s++) {
    const op = rng.below(6);
    const at = position(rng, bytes.length);
    if (op === 0) {
      bytes[at] = (bytes[at] as number) ^ (1 << rng.below(8));
      what.push(`flip@${at}`);
    } else if (op === 1) {
      const n = 1 + rng.below(8);
      for (let i = 0; i < n && at + i < bytes.length; i++) bytes[at + i] = rng.below(256);
      what.push(`rand${n}@${at}`);
    } else if (op === 2) {
      bytes = bytes.slice(0, at);
      what.push(`trunc@${at}`);
    } else if (op === 3) {
      const n = 1 + rng.below(16);
      const ins = new Uint8Array(n).map(() => rng.below(256));
      const out = new Uint8Array(bytes.length + n);
      out.set(bytes.subarray(0, at));
      out.set(ins, at);
      out.set(bytes.subarray(at), at + n);
      bytes = out;
      what.push(`ins${n}@${at}`);
    } else if (op === 4) {
      const n = Math.min(1 + rng.below(16), bytes.length - at);
      const out = new Uint8Array(bytes.length - n);
      out.set(bytes.subarray(0, at));
      out.set(bytes.subarray(at + n), at);
      bytes = out;
      what.push(`del${n}@${at}`);
    } else {
      // an extreme integer in a 64-bit field
      const v = [0xff, 0x00, 0x7f, 0x80][rng.below(4)] as number;
      const aligned = at - (at % 8);
      for (let i = 0; i < 8 && aligned + i < bytes.length; i++) bytes[aligned + i] = v;
      what.push(`u64=${v.toString(16)}@${aligned}`);
    }
  }
  return { bytes, what: what.join(',') };
}

/** A MemoryReader that records any request outside the blob. */
class BoundsCheckingReader extends MemoryReader {
  violations: string[] = [];
  override async readAt(buf: Uint8Array, offset: number): Promise<number> {
    if (!Number.isSafeInteger(offset) || offset < 0 || offset > this.size || offset + buf.length > this.size + (1 << 20)) {
      this.violations.push(`read of ${buf.length} at ${offset} (size ${this.size})`);
    }
    return super.readAt(buf, offset);
  }
}

const READ_BUDGET = 8 << 20;

async function readAllMapped(seed: FuzzSeed, blob: BlobReader): Promise<string | undefined> {
  if (seed.kind === 'zfile') {
    const opened = await openLayerBlob(blob);
    if (opened.reader.size > READ_BUDGET) {
      await opened.reader.readAt(new Uint8Array(4096), opened.reader.size - 4096);
      return undefined;
    }
    const all = new Uint8Array(opened.reader.size);
    let off = 0;
    while (off < all.length) {
      const n = await opened.reader.readAt(all.subarray(off, Math.min(all.length, off + 65536 * 3)), off);
      if (n <= 0) break;
      off += n;
    }
    return opened.zfile !== null && opened.zfile instanceof ZFileReader ? sha256(all.subarray(0, off)) : undefined;
  }
  const opened = await openLayerBlob(blob);
  const layer = await openRoLayer(opened.reader);
  let budget = READ_BUDGET;
  for (const s of layer.segments) {
    if (s.zeroed) continue;
    const bytes = Math.min(s.length * 512, budget);
    if (bytes <= 0) break;
    const buf = new Uint8Array(bytes);
    await layer.blob.readAt(buf, s.moffset * 512);
    budget -= bytes;
  }
  return undefined;
}

export interface FuzzFailure {
  seed: string;
  index: number;
  what: string;
  problem: string;
}

const TIME_LIMIT_MS = 5000;

/** Runs `count` mutated inputs per seed; returns the failures. */
export async function fuzz(options: { count: number; seed: number; seeds?: FuzzSeed[] }): Promise<{ runs: number; failures: FuzzFailure[]; typed: number; ok: number }> {
  const seeds = options.seeds ?? loadSeeds();
  const failures: FuzzFailure[] = [];
  let runs = 0;
  let typed = 0;
  let ok = 0;
  for (let i = 0; i < options.count; i++) {
    const seed = seeds[i % seeds.length] as FuzzSeed;
    const rng = new Rng(options.seed + i * 7919);
    const { bytes, what } = mutate(seed.bytes, rng);
    const reader = new BoundsCheckingReader(bytes);
    runs++;
    let timer: NodeJS.Timeout | undefined;
    try {
      const content = await Promise.race([
        readAllMapped(seed, reader),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error(`hang: no result after ${TIME_LIMIT_MS} ms`)), TIME_LIMIT_MS);
        }),
      ]);
      if (seed.protectedContent !== undefined && content !== undefined && content !== seed.protectedContent) {
        failures.push({ seed: seed.name, index: i, what, problem: 'CRC-protected ZFile read returned wrong content' });
      } else ok++;
    } catch (e) {
      if (e instanceof ObdError) typed++;
      else failures.push({ seed: seed.name, index: i, what, problem: `untyped error: ${e instanceof Error ? e.stack ?? e.message : String(e)}` });
    } finally {
      clearTimeout(timer);
    }
    if (reader.violations.length > 0) {
      failures.push({ seed: seed.name, index: i, what, problem: `read outside the blob: ${reader.violations[0]}` });
    }
  }
  return { runs, failures, typed, ok };
}
