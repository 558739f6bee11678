/**
 * Merged-index lookups per second: the bucket-directory lookup (`MergedIndex.lookup`)
 * against a plain binary search (`binarySearchLookup`) over the same typed arrays, with
 * the same collection and trimming, into the same reusable result.
 *
 * Index: a synthetic 64 GiB layer of N extents with random lengths (1..16383 sectors,
 * mean about a third of the spacing) and random gaps. Queries: random 4 KiB-aligned
 * offsets over the whole device, lengths 4 KiB..128 KiB. Each size is warmed up, then
 * timed over several alternating rounds; the median round counts.
 *
 * `node --import tsx bench/lookup.ts [--rounds N] [--queries N]`
 */
import { binarySearchLookup, LookupResult, MergedIndex } from '../src/formats/lsmt/merged-index.ts';
import type { LookupFunction } from '../src/formats/lsmt/merged-index.ts';
import type { Segment } from '../src/formats/lsmt/segment.ts';

const DEVICE_SECTORS = (64 * 2 ** 30) / 512;
const MAX_LENGTH = 16383;

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
}
const ROUNDS = arg('rounds', 9);
const QUERIES = arg('queries', 1 << 20);

/** xorshift32 → [0, 1). */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 2 ** 32;
  };
}

function syntheticLayer(extents: number, seed: number): Segment[] {
  const r = rng(seed);
  const spacing = DEVICE_SECTORS / extents;
  const meanLength = Math.max(1, Math.min(MAX_LENGTH / 2, spacing / 3));
  const meanGap = spacing - meanLength;
  const out: Segment[] = [];
  let at = Math.floor(r() * meanGap);
  let moffset = 8;
  for (let i = 0; i < extents; i++) {
    const length = Math.min(MAX_LENGTH, 1 + Math.floor(r() * 2 * meanLength));
    out.push({ offset: at, length, moffset, zeroed: r() < 0.05, tag: 0 });
    moffset += length;
    at += length + Math.floor(r() * 2 * meanGap);
  }
  return out;
}

interface Queries {
  offset: Float64Array;
  length: Uint32Array;
}

function queries(count: number, seed: number): Queries {
  const r = rng(seed);
  const q = { offset: new Float64Array(count), length: new Uint32Array(count) };
  for (let i = 0; i < count; i++) {
    q.offset[i] = Math.floor(r() * (DEVICE_SECTORS / 8)) * 8;
    q.length[i] = 8 * (1 + Math.floor(r() * 32));
  }
  return q;
}

function runFast(index: MergedIndex, q: Queries, out: LookupResult): number {
  const offs = q.offset;
  const lens = q.length;
  let found = 0;
  for (let i = 0; i < offs.length; i++) {
    out.count = 0;
    found += index.lookup(offs[i] as number, lens[i] as number, out);
  }
  return found;
}

function runBaseline(find: LookupFunction, q: Queries, out: LookupResult): number {
  const offs = q.offset;
  const lens = q.length;
  let found = 0;
  for (let i = 0; i < offs.length; i++) {
    out.count = 0;
    found += find(offs[i] as number, lens[i] as number, out);
  }
  return found;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] as number;
}

interface Row {
  label: string;
  extents: number;
  fast: number;
  baseline: number;
  speedup: number;
  hitsPerLookup: number;
}

function bench(label: string, extents: number): Row {
  const index = MergedIndex.build([syntheticLayer(extents, 0x2545f491 ^ extents)]);
  const find = binarySearchLookup(index);
  const q = queries(QUERIES, 0x9e3779b9 ^ extents);
  const out = new LookupResult(64);
  // Warm up both paths and check they agree.
  let a = 0;
  let b = 0;
  for (let w = 0; w < 3; w++) {
    a = runFast(index, q, out);
    b = runBaseline(find, q, out);
  }
  if (a !== b) throw new Error(`lookup results differ at ${label}: ${a} vs ${b}`);
  const fastTimes: number[] = [];
  const baseTimes: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? ['fast', 'base'] : ['base', 'fast'];
    for (const which of order) {
      const t0 = performance.now();
      const n = which === 'fast' ? runFast(index, q, out) : runBaseline(find, q, out);
      const dt = performance.now() - t0;
      if (n !== a) throw new Error(`lookup results changed at ${label}`);
      (which === 'fast' ? fastTimes : baseTimes).push(dt);
    }
  }
  const fast = QUERIES / (median(fastTimes) / 1000);
  const baseline = QUERIES / (median(baseTimes) / 1000);
  return { label, extents: index.count, fast, baseline, speedup: fast / baseline, hitsPerLookup: a / QUERIES };
}

const rows = [bench('1k', 1_000), bench('100k', 100_000), bench('1m', 1_000_000)];

const fmt = (x: number): string => (x / 1e6).toFixed(2).padStart(10);
console.log(`merged-index lookup, ${QUERIES} random 4-128 KiB lookups per round, median of ${ROUNDS} rounds (node ${process.version})`);
console.log('extents     | fast Mlookup/s | binary Mlookup/s | speedup | entries/lookup');
for (const r of rows) {
  console.log(
    `${String(r.extents).padEnd(11)} | ${fmt(r.fast)}     | ${fmt(r.baseline)}       | ${r.speedup.toFixed(2).padStart(6)}x | ${r.hitsPerLookup.toFixed(2)}`,
  );
}
for (const r of rows) console.log(`RESULT lookup/speedup-${r.label} ${r.speedup.toFixed(2)}`);
