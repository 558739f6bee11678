/**
 * Raw block throughput of the FUSE frontend: fio with direct I/O on a loop device
 * (`--direct-io=on`) over the served file of a MemoryBlockDevice, against the same
 * loop setup over a plain file in tmpfs (/dev/shm) with the same bytes — memory behind
 * both, so the ratio is the cost of the FUSE round trip and the Node server.
 *
 * Jobs (libaio, `--runtime` seconds each): sequential 1 MiB reads qd16, random 4 KiB
 * reads qd32 and qd1, sequential 1 MiB writes qd16, random 4 KiB writes qd32. Each job
 * runs on both devices alternately, `--rounds` times; the median round counts. Needs
 * root and fio (`apt-get install -y fio`).
 *
 * `node --import tsx bench/fuse-raw.ts [--size MiB] [--runtime s] [--rounds n] [--workers n] [--buffered] [--jobs a,b]`
 * (`--buffered`: FOPEN_DIRECT_IO off.) Prints a table, then `RESULT fuse-raw/<job>-ratio <ours/baseline>`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { execFile, fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { serveFuse } from '../src/fuse/serve-fuse.ts';
import { MemoryBlockDevice } from '../test/support/memory-block-device.ts';

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  const v = i >= 0 ? Number(process.argv[i + 1]) : NaN;
  return Number.isFinite(v) && v > 0 ? v : fallback;
}
const SIZE = arg('size', 1024) * 2 ** 20;
const RUNTIME = arg('runtime', 4);
const ROUNDS = arg('rounds', 3);
const WORKERS = arg('workers', 4);
const BUFFERED = process.argv.includes('--buffered');
const ONLY = process.argv.includes('--jobs') ? String(process.argv[process.argv.indexOf('--jobs') + 1]).split(',') : undefined;

function execLocal(argv: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { maxBuffer: 64 << 20, timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

let helper: ChildProcess | undefined;
let nextId = 0;
const pending = new Map<number, { resolve: (s: string) => void; reject: (e: Error) => void }>();

function sh(argv: string[]): Promise<string> {
  const h = helper as ChildProcess;
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    h.send({ id, argv });
  });
}

interface Job {
  name: string;
  args: string[];
  unit: 'MiB/s' | 'IOPS';
}

const JOBS: Job[] = [
  { name: 'seq-read-1m-qd16', args: ['--rw=read', '--bs=1M', '--iodepth=16'], unit: 'MiB/s' },
  { name: 'rand-read-4k-qd32', args: ['--rw=randread', '--bs=4k', '--iodepth=32'], unit: 'IOPS' },
  { name: 'rand-read-4k-qd1', args: ['--rw=randread', '--bs=4k', '--iodepth=1'], unit: 'IOPS' },
  { name: 'seq-write-1m-qd16', args: ['--rw=write', '--bs=1M', '--iodepth=16'], unit: 'MiB/s' },
  { name: 'rand-write-4k-qd32', args: ['--rw=randwrite', '--bs=4k', '--iodepth=32'], unit: 'IOPS' },
];

async function fio(device: string, job: Job): Promise<number> {
  const out = await sh(['fio', `--name=${job.name}`, `--filename=${device}`, '--direct=1', '--ioengine=libaio', `--runtime=${RUNTIME}`, '--time_based', '--output-format=json', ...job.args]);
  const j = (JSON.parse(out) as { jobs: Array<Record<'read' | 'write', { io_bytes: number; bw_bytes: number; iops: number }>> }).jobs[0];
  if (j === undefined) throw new Error('fio printed no job');
  const rw = j.read.io_bytes > 0 ? j.read : j.write;
  return job.unit === 'IOPS' ? rw.iops : rw.bw_bytes / 2 ** 20;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main(): Promise<void> {
  helper = fork(fileURLToPath(import.meta.url), ['--helper'], { stdio: 'inherit' });
  helper.on('message', (m: { id: number; out?: string; error?: string }) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (m.error !== undefined) p?.reject(new Error(m.error));
    else p?.resolve(m.out ?? '');
  });
  try {
    await run();
  } finally {
    helper.disconnect();
  }
}

async function run(): Promise<void> {
  await sh(['fio', '--version']).catch(() => {
    console.error('fio is required: apt-get install -y fio');
    process.exit(2);
  });
  const dir = mkdtempSync(join(tmpdir(), 'obd-bench-fuse-'));
  const shmDir = mkdtempSync('/dev/shm/obd-bench-');
  const loops: string[] = [];
  const bytes = new Uint8Array(SIZE);
  const device = new MemoryBlockDevice(bytes);
  const fuse = await serveFuse(device, { mountpoint: dir, workers: WORKERS, directIo: !BUFFERED });
  randomFillSync(bytes); // After the last fork of this process (serveFuse's mount).
  try {
    const baselineFile = join(shmDir, 'baseline.img');
    await writeFile(baselineFile, bytes);
    const ours = await sh(['losetup', '-f', '--show', '--direct-io=on', fuse.path]);
    loops.push(ours);
    const base = await sh(['losetup', '-f', '--show', '--direct-io=on', baselineFile]);
    loops.push(base);
    console.log(`fuse-raw: ${SIZE / 2 ** 20} MiB, ${WORKERS} readers, FOPEN_DIRECT_IO ${!BUFFERED}, ${RUNTIME} s x ${ROUNDS} rounds`);
    console.log('job                  | unit  |  loop+FUSE |  loop+tmpfs | ratio');
    const ratios: Array<[string, number]> = [];
    for (const job of JOBS.filter((j) => ONLY === undefined || ONLY.includes(j.name))) {
      const a: number[] = [];
      const b: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        a.push(await fio(ours, job));
        b.push(await fio(base, job));
      }
      const ratio = median(a) / median(b);
      ratios.push([job.name, ratio]);
      console.log(`${job.name.padEnd(20)} | ${job.unit.padEnd(5)} | ${median(a).toFixed(0).padStart(10)} | ${median(b).toFixed(0).padStart(11)} | ${ratio.toFixed(2)}`);
    }
    for (const [name, ratio] of ratios) console.log(`RESULT fuse-raw/${name}-ratio ${ratio.toFixed(3)}`);
  } finally {
    for (const l of loops) await sh(['losetup', '-d', l]).catch((e: Error) => console.error(e.message));
    await fuse.unmount({ abortAfterMs: 5000 });
    rmSync(shmDir, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
}

// Commands run in a helper process forked before the device memory exists. A fork from
// this process would write-protect the whole heap (copy-on-write), and every later write
// to a page of the in-memory device would take a page fault: measured 4.5 ms per 1 MiB
// write here instead of 0.2 ms, which would measure the VM's page faults, not FUSE.
if (process.argv.includes('--helper')) {
  process.on('message', (m: { id: number; argv: string[] }) => {
    execLocal(m.argv).then(
      (out) => process.send?.({ id: m.id, out }),
      (e: Error) => process.send?.({ id: m.id, error: e.message }),
    );
  });
  process.on('disconnect', () => process.exit(0));
} else {
  await main();
}
