/**
 * ZFile compress / decompress throughput against the `lz4` and `zstd` command-line tools
 * on the same data, in the same run.
 *
 * Data: a tar of /usr/lib (fallback /usr) cut to 160 MiB, in os.tmpdir(). For lz4 and
 * zstd at 4 KiB and 32 KiB blocks:
 *  - ours, compress: FileReader (1 MiB reads) → ZFileWriter → FileSink;
 *  - ours, decompress: ZFileReader over a FileReader, whole file in sequential 1 MiB reads;
 *  - CLI: `lz4 -1 -f IN OUT` / `lz4 -d -f`, `zstd -3 -f IN -o OUT` / `zstd -d -f`.
 * Page cache warm for both (inputs read once before timing), best of 3 runs each.
 * MB/s = uncompressed bytes / 10^6 / seconds. Prints a table, then
 * `RESULT zfile/<algo>-<op>-<bs>-vs-cli <ours/cli>` lines.
 *
 * Run: `node --import tsx bench/zfile.ts` (or `npm run bench -- zfile`).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileReader } from '../src/io/file-reader.ts';
import { FileSink } from '../src/io/file-sink.ts';
import { ZFileReader } from '../src/formats/zfile/reader.ts';
import { ZFileWriter } from '../src/formats/zfile/writer.ts';

const TARGET = 160 << 20;
const MIN = 128 << 20;
const CHUNK = 1 << 20;
const RUNS = 3;

const dir = mkdtempSync(join(tmpdir(), 'bench-zfile-'));
const input = join(dir, 'data.tar');

function seconds(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function makeData(): number {
  for (const src of ['usr/lib', 'usr']) {
    execFileSync('sh', ['-c', `tar -cf - -C / ${src} 2>/dev/null | head -c ${TARGET} > "${input}"; true`]);
    const size = statSync(input).size;
    if (size >= MIN) return size;
  }
  throw new Error(`Cannot build ${MIN} bytes of benchmark data from /usr/lib or /usr`);
}

function warm(path: string): void {
  readFileSync(path);
}

async function best(fn: () => Promise<void> | void): Promise<number> {
  let t = Infinity;
  for (let i = 0; i < RUNS; i++) {
    const start = process.hrtime.bigint();
    await fn();
    t = Math.min(t, seconds(start));
  }
  return t;
}

async function ourCompress(out: string, algorithm: 'lz4' | 'zstd', blockSize: number): Promise<void> {
  rmSync(out, { force: true });
  const src = await FileReader.open(input);
  const w = await ZFileWriter.create(await FileSink.create(out), { algorithm, blockSize });
  const buf = new Uint8Array(CHUNK);
  for (let off = 0; off < src.size; ) {
    const n = await src.readAt(buf, off);
    await w.write(buf.subarray(0, n));
    off += n;
  }
  await w.close();
  await src.close();
}

async function ourDecompress(path: string, check?: Uint8Array): Promise<void> {
  const z = await ZFileReader.open(await FileReader.open(path));
  const buf = new Uint8Array(CHUNK);
  for (let off = 0; off < z.size; ) {
    const n = await z.readAt(buf, off);
    if (check !== undefined && Buffer.compare(buf.subarray(0, n), check.subarray(off, off + n)) !== 0) {
      throw new Error(`Decoded bytes differ at ${off}`);
    }
    off += n;
  }
  await z.close();
}

interface Row {
  algo: 'lz4' | 'zstd';
  bs: number;
  ratio: number;
  oursC: number;
  oursD: number;
  cliC: number;
  cliD: number;
  cliDNull: number;
}

const size = makeData();
const mb = size / 1e6;
warm(input);
const rows: Row[] = [];
try {
  const cli: Record<string, { c: number; d: number; dNull: number }> = {};
  for (const algo of ['lz4', 'zstd'] as const) {
    const packed = join(dir, `cli.${algo}`);
    const unpacked = join(dir, `cli.${algo}.out`);
    const c =
      algo === 'lz4'
        ? await best(() => void execFileSync('lz4', ['-q', '-1', '-f', input, packed]))
        : await best(() => void execFileSync('zstd', ['-q', '-3', '-f', input, '-o', packed]));
    warm(packed);
    const d =
      algo === 'lz4'
        ? await best(() => void execFileSync('lz4', ['-q', '-d', '-f', packed, unpacked]))
        : await best(() => void execFileSync('zstd', ['-q', '-d', '-f', packed, '-o', unpacked]));
    // Supplementary: the CLI decoding to /dev/null (no output-file write, like our reader).
    const dn =
      algo === 'lz4'
        ? await best(() => void execFileSync('lz4', ['-q', '-d', '-f', packed, '/dev/null']))
        : await best(() => void execFileSync('zstd', ['-q', '-d', '-f', packed, '-o', '/dev/null']));
    cli[algo] = { c: mb / c, d: mb / d, dNull: mb / dn };
    rmSync(packed, { force: true });
    rmSync(unpacked, { force: true });
  }
  const original = new Uint8Array(readFileSync(input));
  for (const algo of ['lz4', 'zstd'] as const) {
    for (const bs of [4096, 32768]) {
      const out = join(dir, `ours.${algo}.${bs}.zfile`);
      const c = await best(() => ourCompress(out, algo, bs));
      warm(out);
      await ourDecompress(out, original); // correctness, untimed
      const d = await best(() => ourDecompress(out));
      const base = cli[algo]!;
      rows.push({ algo, bs, ratio: statSync(out).size / size, oursC: mb / c, oursD: mb / d, cliC: base.c, cliD: base.d, cliDNull: base.dNull });
      rmSync(out, { force: true });
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}

const f = (v: number): string => v.toFixed(0).padStart(8);
const r = (v: number): string => v.toFixed(2).padStart(6);
console.log(`data: tar of /usr/lib, ${size} bytes; MB/s of uncompressed bytes, best of ${RUNS}`);
console.log('cli-d writes its output to a file in tmpdir; cli-d0 decodes to /dev/null (supplementary)');
console.log('algo  block  size%  ours-c   cli-c  ratio  ours-d   cli-d  ratio  cli-d0  ratio');
for (const x of rows) {
  console.log(
    `${x.algo.padEnd(5)} ${String(x.bs / 1024).padStart(3)}K ${(x.ratio * 100).toFixed(1).padStart(6)} ${f(x.oursC)}${f(x.cliC)} ${r(x.oursC / x.cliC)}${f(x.oursD)}${f(x.cliD)} ${r(x.oursD / x.cliD)}${f(x.cliDNull)} ${r(x.oursD / x.cliDNull)}`,
  );
}
for (const x of rows) {
  const k = `${x.bs / 1024}k`;
  console.log(`RESULT zfile/${x.algo}-decompress-${k}-vs-cli ${(x.oursD / x.cliD).toFixed(3)}`);
  console.log(`RESULT zfile/${x.algo}-compress-${k}-vs-cli ${(x.oursC / x.cliC).toFixed(3)}`);
  console.log(`RESULT zfile/${x.algo}-decompress-${k}-vs-cli-devnull ${(x.oursD / x.cliDNull).toFixed(3)}`);
}
