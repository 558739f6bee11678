/**
 * bench/device: the overlaybd device (FUSE + loop over a tar(ZFile lz4) layer) against a
 * plain loop device over the same uncompressed raw image, in one run. fio with direct
 * I/O (libaio); the page cache is dropped before every job, the layer blob is local
 * (the "warm local cache" case). Jobs: sequential 1 MiB reads qd16, random 4 KiB reads
 * qd32. Prints a table and `RESULT device/<job>-ratio <ours/baseline>`.
 *
 * `node --import tsx bench/device.ts [--size MiB] [--runtime s] [--rounds n] [--workers n] [--plain] [--js] [--handoff]`
 * (`--plain`: an uncompressed layer instead of ZFile lz4; `--js`: JavaScript reader
 * threads that read their own copy of the layers instead of the native READ path;
 * `--handoff`: reader threads hand every read to the serving thread).
 * Needs root and fio.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, writeSync, closeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createWritableLayer } from '../src/formats/lsmt/writable-layer.ts';
import { commitFile } from '../src/formats/lsmt/commit-files.ts';
import { openDevice } from '../src/device/open-device.ts';
import { parseDeviceConfig } from '../src/image/device-config.ts';
import { attachDevice } from '../src/attach/attach-device.ts';
import { localReadsFor } from '../src/attach/local-reads.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
}
const SIZE = arg('size', 512) * 2 ** 20;
const RUNTIME = arg('runtime', 5);
const ROUNDS = arg('rounds', 3);
const PLAIN = process.argv.includes('--plain');

function exec(argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { maxBuffer: 64 << 20, timeout: 300_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

async function fio(dev: string, job: { rw: string; bs: string; depth: number }): Promise<number> {
  writeFileSync('/proc/sys/vm/drop_caches', '3');
  const out = await exec(['fio', '--name=b', `--filename=${dev}`, '--direct=1', '--ioengine=libaio', `--rw=${job.rw}`, `--bs=${job.bs}`, `--iodepth=${job.depth}`, `--runtime=${RUNTIME}`, '--time_based', '--readonly', `--size=${SIZE}`, '--output-format=json']);
  const r = JSON.parse(out) as { jobs: Array<{ read: { bw_bytes: number; iops: number } }> };
  const read = r.jobs[0]?.read;
  return job.bs === '1M' ? (read?.bw_bytes ?? 0) / 2 ** 20 : (read?.iops ?? 0);
}

const dir = mkdtempSync(join(tmpdir(), 'obd-bench-device-'));
const detachers: Array<() => Promise<void>> = [];
try {
  // realistic content: a tar of /usr/lib, cut or padded to SIZE
  const raw = join(dir, 'raw.img');
  execFileSync('sh', ['-c', `tar -cf - /usr/lib 2>/dev/null | head -c ${SIZE} > ${raw}; truncate -s ${SIZE} ${raw}`]);
  const data = join(dir, 'w.data');
  const index = join(dir, 'w.index');
  const layer = await createWritableLayer({ data, index, virtualSize: Math.ceil(SIZE / 2 ** 30) * 2 ** 30 });
  const fd = openSync(raw, 'r');
  const chunk = Buffer.alloc(4 << 20);
  for (let at = 0; at < SIZE; at += chunk.length) {
    const { readSync } = await import('node:fs');
    const n = readSync(fd, chunk, 0, chunk.length, at);
    await layer.write(chunk.subarray(0, n), at);
  }
  closeSync(fd);
  await layer.flush();
  await layer.close();
  const blob = join(dir, 'layer.commit');
  await commitFile({ data, index }, blob, PLAIN ? {} : { zfile: { algorithm: 'lz4', blockSize: 4096, verify: true, rewriteHeader: true }, tar: true });
  rmSync(data);
  rmSync(index);

  const cfg = parseDeviceConfig(JSON.stringify({ lowers: [{ file: blob }] }), dir);
  const device = await openDevice(cfg);
  // --handoff: every read goes through the serving thread (the path before local reads).
  const localReads = process.argv.includes('--handoff') ? undefined : await localReadsFor(cfg, { native: !process.argv.includes('--js') });
  const att = await attachDevice(device, { runDir: join(dir, 'run'), workers: arg('workers', 16), ...(localReads !== undefined ? { localReads } : {}) });
  detachers.push(async () => {
    await att.detach();
    await device.close();
  });
  const baseLoop = execFileSync('losetup', ['-f', '--show', '--direct-io=on', '-r', raw], { encoding: 'utf8' }).trim();
  detachers.push(async () => void execFileSync('losetup', ['-d', baseLoop]));
  const oursDev = att.blockDevice;
  // The overlaybd device is 1 GiB+; fio reads only the image's first SIZE bytes on both.
  const jobs = [
    { name: 'seq-1m-qd16', rw: 'read', bs: '1M', depth: 16, unit: 'MiB/s' },
    { name: 'rand-4k-qd32', rw: 'randread', bs: '4k', depth: 32, unit: 'IOPS' },
  ];
  writeSync(1, `device bench: ${SIZE / 2 ** 20} MiB image, ${PLAIN ? 'uncompressed' : 'tar(ZFile lz4 4K)'} layer ${blob}; fio ${RUNTIME}s x ${ROUNDS} rounds, page cache dropped per job\n`);
  writeSync(1, `job            ours        baseline    ratio\n`);
  const results: Array<[string, number]> = [];
  for (const job of jobs) {
    const ours: number[] = [];
    const base: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      ours.push(await fio(`${oursDev}`, { ...job }));
      base.push(await fio(baseLoop, { ...job }));
    }
    const med = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)] as number;
    const ratio = med(ours) / med(base);
    writeSync(1, `${job.name.padEnd(14)} ${med(ours).toFixed(0).padStart(8)} ${job.unit.padEnd(6)} ${med(base).toFixed(0).padStart(8)} ${job.unit.padEnd(6)} ${ratio.toFixed(2)}\n`);
    results.push([job.name, ratio]);
  }
  for (const [name, ratio] of results) writeSync(1, `RESULT device/${name}-ratio ${ratio.toFixed(3)}\n`);
} finally {
  for (const d of detachers.reverse()) await d().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}
