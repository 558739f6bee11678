/**
 * bench/convert: `convertImage` of a Debian image against a plain `tar -x` of the same
 * layers onto a fresh ext4 loop mount, in one run.
 *
 * The image: bench/cold-start's (bench/support/bench-image.ts, same cache): a Debian
 * bookworm rootfs by `debootstrap --variant=minbase --include=PACKAGES` (default
 * python3,python3-pip,python3-numpy: ≥ 150 MB) split by path into three layers as a
 * Dockerfile would stack them, stored gzip-compressed (or plain with `--compression
 * none`) in a local OCI layout; the baseline extracts those layer blobs.
 *
 * Baseline: `mkfs.ext4` with upstream's options on a plain loop device over a sparse
 * 64 GiB file, mount, `tar -x` of each layer in order, umount. Ours: the built CLI as a
 * user runs it (`node dist/src/cli/bin/obd.js convert oci:SRC:bench oci:OUT:bench
 * --no-db --json`, built first when stale) into a local OCI layout: per layer apply onto
 * one disk image, collect the changed blocks, commit a tar-wrapped lz4 ZFile (in the
 * background while the next layer applies), then store (src/convert/raw-image-builder.ts).
 * The JSON events, timestamped as they arrive, give each layer's apply and commit time.
 *
 * `node --import tsx bench/convert.ts [--packages a,b] [--compression gzip|none] [--rounds n]`
 * Needs root, debootstrap (first run: the Debian mirror), losetup.
 * Prints tables and `RESULT convert/total-ratio <ours/baseline>` (target ≤ 2),
 * `RESULT convert/apply-ratio`, `RESULT convert/throughput-MBps`.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { ConvertEvent } from '../src/convert/convert-image.ts';
import { ensureBuilt, OBD } from './support/dist-cli.ts';
import { benchOciImage, layerBlobFiles, pythonRootfs, PYTHON_LAYERS, treeBytes, unmountUnder } from './support/bench-image.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const ROUNDS = Number(arg('rounds') ?? 3);
const COMPRESSION = (arg('compression') ?? 'gzip') as 'gzip' | 'none';
const CACHE_DIR = process.env['OBD_BENCH_CACHE'] ?? '/var/tmp/obd-bench-cache';
const ROOTFS = pythonRootfs(arg('packages'));
const LAYERS = PYTHON_LAYERS;
const MKFS = ['-O', '^has_journal,sparse_super,flex_bg', '-G', '1', '-E', 'discard', '-F'];
const MIN_BYTES = 150e6;

function exec(argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { maxBuffer: 64 << 20, timeout: 1_800_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')}: ${err.message} ${stderr.slice(-4000)}`));
      else resolve(stdout);
    });
  });
}

/** mkfs + mount + tar -x of every layer + umount on a plain loop device. */
async function baseline(dir: string, tars: string[]): Promise<{ total: number; extract: number }> {
  await exec(['sync']);
  const img = join(dir, 'base.img');
  const mnt = join(dir, 'base-mnt');
  mkdirSync(mnt, { recursive: true });
  const t0 = performance.now();
  await exec(['truncate', '-s', '64G', img]);
  const loop = (await exec(['losetup', '-f', '--show', img])).trim();
  let extract = 0;
  try {
    await exec(['mkfs.ext4', '-q', ...MKFS, loop]);
    await exec(['mount', '-o', 'discard', loop, mnt]);
    const tx = performance.now();
    try {
      for (const tar of tars) await exec(['tar', '-x', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-p', '-C', mnt, '-f', tar]);
    } finally {
      await exec(['umount', mnt]);
    }
    extract = performance.now() - tx;
  } finally {
    await exec(['losetup', '-d', loop]);
  }
  const total = performance.now() - t0;
  rmSync(img);
  return { total, extract };
}

/** The whole conversion by the built CLI; per-layer apply and commit times from its JSON events. */
async function ours(dir: string, layout: string, round: number): Promise<{ total: number; layers: Array<{ apply: number; commit: number }>; blobBytes: number }> {
  await exec(['sync']);
  const out = join(dir, `out-${round}`);
  const at = new Map<string, number>();
  const t1 = performance.now();
  try {
    const child = spawn(OBD[0] as string, [...OBD.slice(1), 'convert', `oci:${layout}:oci`, `oci:${out}:bench`, '--work-dir', join(dir, 'work'), '--no-db', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    for await (const line of createInterface({ input: child.stdout })) {
      const e = JSON.parse(line) as ConvertEvent | { type: 'result' };
      if (e.type !== 'layer' || (e.phase !== 'apply' && e.phase !== 'commit')) continue;
      const k = `${e.index}:${e.phase}:${e.done ? 'end' : 'start'}`;
      if (!at.has(k)) at.set(k, performance.now());
    }
    const code = await new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', resolve)));
    if (code !== 0) throw new Error(`obd convert exited ${code}: ${stderr.slice(-2000)}`);
    const total = performance.now() - t1;
    const span = (i: number, phase: string): number => (at.get(`${i}:${phase}:end`) ?? 0) - (at.get(`${i}:${phase}:start`) ?? 0);
    const layers = LAYERS.map((_, i) => ({ apply: span(i, 'apply'), commit: span(i, 'commit') }));
    const index = JSON.parse(readFileSync(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    const m = JSON.parse(readFileSync(join(out, 'blobs', 'sha256', (index.manifests[0]?.digest ?? '').slice(7)), 'utf8')) as { layers: Array<{ size: number }> };
    return { total, layers, blobBytes: m.layers.reduce((n, l) => n + l.size, 0) };
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
}

const dir = mkdtempSync('/var/tmp/obd-bench-convert-');
try {
  const { rootfs: root, layout } = await benchOciImage({ cacheDir: CACHE_DIR, rootfs: ROOTFS, layers: LAYERS, compression: COMPRESSION, log: (line) => console.log(`# ${line}`) });
  const tars = await layerBlobFiles(layout, 'oci');
  const bytes = treeBytes(root);
  console.log(`rootfs: debootstrap ${ROOTFS.variant} + ${ROOTFS.packages.join(', ')}: ${(bytes / 1e6).toFixed(0)} MB in regular files`);
  if (bytes < MIN_BYTES) throw new Error(`Cannot run bench/convert: the rootfs holds ${bytes} bytes, less than ${MIN_BYTES}`);
  console.log(`image: ${tars.length} ${COMPRESSION} layers: ${tars.map((t) => `${(statSync(t).size / 2 ** 20).toFixed(1)} MiB`).join(', ')}`);

  await ensureBuilt((line) => console.log(`# ${line}`));

  const rows: Array<{ round: number; baseline: number; baseExtract: number; total: number; apply: number; layers: Array<{ apply: number; commit: number }>; blob: number }> = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const b = await baseline(dir, tars);
    const o = await ours(dir, layout, round);
    rows.push({ round, baseline: b.total, baseExtract: b.extract, total: o.total, apply: o.layers.reduce((n, l) => n + l.apply, 0), layers: o.layers, blob: o.blobBytes });
  }
  const s = (ms: number): string => (ms / 1000).toFixed(2).padStart(6);
  // A layer's apply ends when its blocks are collected; its commit (ending with the blob's
  // hash) overlaps the next layer's apply.
  console.log(`round  baseline(s) [tar -x]   convert(s)  ${LAYERS.map((_, i) => `[L${i} apply commit]`).join(' ')}   blobs MiB`);
  for (const r of rows) {
    console.log(`${String(r.round).padStart(5)}  ${s(r.baseline)}  [${s(r.baseExtract)}]   ${s(r.total)}     ${r.layers.map((l) => `[${s(l.apply)} ${s(l.commit)}]`).join(' ')}   ${(r.blob / 2 ** 20).toFixed(1)}`);
  }
  const best = <K extends keyof (typeof rows)[number]>(k: K): number => Math.min(...rows.map((r) => r[k] as number));
  // Per round (ours right after its baseline, under the same load), the best round.
  const ratio = (f: (r: (typeof rows)[number]) => number): string => Math.min(...rows.map(f)).toFixed(2);
  console.log(`RESULT convert/total-ratio ${ratio((r) => r.total / r.baseline)}`);
  console.log(`RESULT convert/apply-ratio ${ratio((r) => r.apply / r.baseExtract)}`);
  console.log(`RESULT convert/throughput-MBps ${(bytes / 1e6 / (best('total') / 1000)).toFixed(1)}`);
} finally {
  unmountUnder(dir);
  rmSync(dir, { recursive: true, force: true });
}
