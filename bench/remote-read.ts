/**
 * Random 4 KiB reads of a remote layer: RemoteBlobReader with 16 requests in flight
 * against the same reader limited to one request at a time, same reads, same run.
 *
 * Setup: a 64 MiB plain blob of realistic content (a tar of /usr/lib cut to 64 MiB;
 * generated text-like data when that is too small) written to a temp dir and served by
 * an in-process node:http origin with Range support, behind the fault proxy with 20 ms
 * added latency per request and no faults. Origin and proxy run in a worker thread
 * (the second core: this machine's loopback moves only ~130-250 MB/s and one thread
 * cannot both serve and read at that rate), the readers on the main thread. Each variant gets a fresh reader
 * (cold 8 MiB chunk cache, defaults otherwise) over an HttpRangeSource; 16 concurrent
 * readers issue the same READS random 4 KiB-aligned reads (offsets from a seeded PRNG);
 * every read is compared with the blob.
 *
 * Two refill sizes are measured: 64 KiB (the headline: random small reads want a small
 * refill) and the 256 KiB default (more bytes per miss, so bandwidth limits it sooner).
 * Prints reads/s, requests and MB fetched per variant, then
 * `RESULT remote-read/speedup-16-refill-256k <ratio>` and, last,
 * `RESULT remote-read/speedup-16 <reads/s with 16 ÷ reads/s with 1, 64 KiB refill>`
 * (target >= 5).
 *
 * Run: `node --import tsx bench/remote-read.ts [READS]` (or `npm run bench -- remote-read`).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { RemoteBlobReader } from '../src/registry/remote-blob-reader.ts';
import { FaultProxy } from '../test/fakes/fault-proxy.ts';
import { HttpRangeSource } from '../test/fakes/http-range-source.ts';
import { StaticRangeOrigin } from '../test/fakes/static-range-origin.ts';

const SIZE = 64 << 20;
const READ = 4096;
const READERS = 16;
const LATENCY_MS = 20;
const READS = Number(process.argv[2] ?? 1000);

function makeBlob(path: string): void {
  execFileSync('sh', ['-c', `tar -cf - -C / usr/lib 2>/dev/null | head -c ${SIZE} > "${path}"; true`]);
  if (statSync(path).size >= SIZE) return;
  const words = ['overlay', 'block', 'layer', 'registry', 'image', 'lazy', 'pull', 'chunk', '\n'];
  const out = Buffer.alloc(SIZE);
  let x = 1;
  for (let i = 0; i < SIZE; ) {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    i += out.write(`${x % 5 === 0 ? x : words[x % words.length]} `, i);
  }
  writeFileSync(path, out);
}

function offsets(seed: number): number[] {
  let a = seed >>> 0;
  return Array.from({ length: READS }, () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return Math.floor((a / 4294967296) * (SIZE / READ)) * READ;
  });
}

interface Result {
  rps: number;
  requests: number;
  mb: number;
}

async function run(url: string, blob: Uint8Array, o: { concurrency: number; refillSize: number }): Promise<Result> {
  const reader = new RemoteBlobReader(await HttpRangeSource.open(url), { name: 'bench layer', ...o });
  const todo = offsets(42);
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: READERS }, async () => {
      const buf = new Uint8Array(READ);
      while (next < todo.length) {
        const off = todo[next++]!;
        const n = await reader.readAt(buf, off);
        if (n !== READ || !Buffer.from(buf).equals(blob.subarray(off, off + READ))) {
          throw new Error(`Read at ${off} returned wrong bytes`);
        }
      }
    }),
  );
  const s = (performance.now() - start) / 1000;
  const { requests, bytesFetched } = reader.stats;
  await reader.close();
  return { rps: READS / s, requests, mb: bytesFetched / 1e6 };
}

async function serve(path: string): Promise<void> {
  const origin = await StaticRangeOrigin.start({ '/layer': new Uint8Array(readFileSync(path)) });
  const proxy = await FaultProxy.start({ upstream: origin.url, latencyMs: LATENCY_MS });
  parentPort!.postMessage(`${proxy.url}/layer`);
  parentPort!.once('message', () => {
    void Promise.all([proxy.close(), origin.close()]).then(() => parentPort!.close());
  });
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-remote-read-'));
  const path = join(dir, 'layer.bin');
  // Workers do not inherit the tsx loader: register it, then load this file.
  const tsx = import.meta.resolve('tsx/esm/api');
  const boot = `import(${JSON.stringify(tsx)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
  const worker = new Worker(boot, { eval: true, workerData: path });
  const exited = new Promise((resolve) => worker.once('exit', resolve));
  const failed = new Promise<never>((_, reject) => worker.once('error', reject));
  failed.catch(() => {});
  try {
    makeBlob(path);
    const blob = new Uint8Array(readFileSync(path));
    worker.postMessage('start');
    const gone = exited.then(() => Promise.reject(new Error('Cannot start the bench servers: worker exited')));
    const url = await Promise.race([new Promise<string>((resolve) => worker.once('message', resolve)), failed, gone]);
    const rows: Array<[string, Result]> = [];
    const ratio: Record<number, number> = {};
    for (const refillSize of [256 << 10, 64 << 10]) {
      const par = await run(url, blob, { concurrency: 16, refillSize });
      const one = await run(url, blob, { concurrency: 1, refillSize });
      rows.push([`${refillSize >> 10} KiB refill, concurrency 16`, par], [`${refillSize >> 10} KiB refill, concurrency 1`, one]);
      ratio[refillSize] = par.rps / one.rps;
    }
    console.log(`remote layer ${SIZE >> 20} MiB behind the proxy (+${LATENCY_MS} ms per request), ${READS} random ${READ}-byte reads by ${READERS} readers`);
    console.log(`${'variant'.padEnd(34)} reads/s  requests  MB fetched`);
    for (const [name, r] of rows) {
      console.log(`${name.padEnd(34)} ${r.rps.toFixed(0).padStart(7)} ${String(r.requests).padStart(9)} ${r.mb.toFixed(1).padStart(11)}`);
    }
    console.log(`RESULT remote-read/speedup-16-refill-256k ${ratio[256 << 10]!.toFixed(2)}`);
    console.log(`RESULT remote-read/speedup-16 ${ratio[64 << 10]!.toFixed(2)}`);
  } finally {
    worker.postMessage('stop');
    const timer = setTimeout(() => void worker.terminate(), 5000);
    await exited;
    clearTimeout(timer);
    rmSync(dir, { recursive: true, force: true });
  }
}

if (isMainThread) {
  await main();
} else {
  parentPort!.once('message', () => void serve(workerData as string));
}
