/**
 * NBD server throughput: `nbdcopy` against our server (serving a 256 MiB
 * MemoryBlockDevice) and against `nbdkit memory 256M` (C, multi-threaded), same data,
 * same run, both over unix sockets.
 *
 * Our server runs in a child process, as nbdkit does: the process that spawns nbdcopy
 * must not hold the device memory, or every fork() write-protects its pages and the
 * next write to each page costs a copy-on-write fault (measured: 65 K faults per
 * 256 MiB pass, writes 3-4x slower).
 *
 * Data: 256 MiB of random bytes in a file in os.tmpdir() (page cache warm).
 *  - write: `nbdcopy --flush DATA URI` (nbdcopy's defaults: 4 connections when the server
 *    offers multi-conn, 64 requests in flight each, 256 KiB requests);
 *  - read: `nbdcopy --no-extents URI null:` (no block-status shortcut: every byte moves).
 * Both exports are filled and read back once first, untimed (the copy is compared with
 * the data; it also warms our JIT). Timed runs alternate between the two servers (other
 * work on the machine hits both alike); best of 5 each. MB/s = 256 MiB / 10^6 / seconds.
 * Prints a table, then `RESULT nbd/read-vs-nbdkit`, `RESULT nbd/write-vs-nbdkit` and,
 * last, `RESULT nbd/copy-vs-nbdkit <ratio>` (the read direction: copying an export out,
 * what a lazily pulled image mostly does).
 *
 * Run: `node --import tsx bench/nbd.ts` (or `npm run bench -- nbd`). Needs nbdcopy and nbdkit.
 */
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { createNbdServer } from '../src/nbd/nbd-server.ts';
import { nbdUri } from '../src/nbd/nbd-uri.ts';
import { MemoryBlockDevice } from '../test/support/memory-block-device.ts';

const SIZE = 256 << 20;
const RUNS = 5;
const SERVE = '--serve-nbd';

/** Child mode: serve a MemoryBlockDevice on the socket given after SERVE until stdin closes. */
async function serve(path: string): Promise<void> {
  const server = createNbdServer({ device: new MemoryBlockDevice(SIZE), name: 'mem' });
  await server.listen({ path });
  process.stdout.write('ready\n');
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.once('end', resolve));
  await server.close();
}

async function waitForSocket(path: string, child: ChildProcess, what: string): Promise<void> {
  for (let i = 0; i < 400 && !existsSync(path) && child.exitCode === null; i++) await sleep(25);
  if (!existsSync(path)) throw new Error(`Cannot benchmark: ${what} did not start`);
}

async function stop(child: ChildProcess | undefined, how: () => void): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  how();
  await Promise.race([exited, sleep(10_000)]);
  if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
}

async function main(): Promise<void> {
  const exec = promisify(execFile);
  const nbdcopy = async (args: string[]): Promise<void> => void (await exec('nbdcopy', args, { timeout: 300_000 }));
  const seconds = (start: bigint): number => Number(process.hrtime.bigint() - start) / 1e9;

  const dir = mkdtempSync(join(tmpdir(), 'bench-nbd-'));
  const data = join(dir, 'data.img');
  const bytes = new Uint8Array(SIZE);
  for (let at = 0; at < SIZE; at += 1 << 20) randomFillSync(bytes, at, 1 << 20);
  writeFileSync(data, bytes);

  /** Fills the export, reads it back and compares (untimed). */
  const prepare = async (uri: string, label: string): Promise<void> => {
    await nbdcopy([data, uri]);
    const check = join(dir, `${label}.check`);
    await nbdcopy(['--no-extents', uri, check]);
    if (!Buffer.from(readFileSync(check)).equals(bytes)) throw new Error(`Bytes read back from ${label} differ`);
    rmSync(check);
  };

  /** Best seconds per URI for `args(uri)`, runs alternating between the URIs. */
  const alternate = async (uris: string[], args: (uri: string) => string[]): Promise<number[]> => {
    const bestOf = uris.map(() => Infinity);
    for (let i = 0; i < RUNS; i++) {
      for (const [k, uri] of uris.entries()) {
        const start = process.hrtime.bigint();
        await nbdcopy(args(uri));
        bestOf[k] = Math.min(bestOf[k] as number, seconds(start));
      }
    }
    return bestOf;
  };

  let ours: ChildProcess | undefined;
  let nbdkit: ChildProcess | undefined;
  try {
    const oursSock = join(dir, 'ours.sock');
    ours = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), SERVE, oursSock], {
      stdio: ['pipe', 'ignore', 'inherit'],
    });
    await waitForSocket(oursSock, ours, 'our NBD server');
    const kitSock = join(dir, 'nbdkit.sock');
    nbdkit = spawn('nbdkit', ['-f', '-U', kitSock, 'memory', String(SIZE)], { stdio: 'ignore' });
    await waitForSocket(kitSock, nbdkit, 'nbdkit');
    const oursUri = nbdUri({ path: oursSock }, 'mem');
    const kitUri = nbdUri({ path: kitSock });
    await prepare(oursUri, 'ours');
    await prepare(kitUri, 'nbdkit');
    const mb = SIZE / 1e6;
    const [oursW, kitW] = (await alternate([oursUri, kitUri], (uri) => ['--flush', data, uri])) as [number, number];
    const [oursR, kitR] = (await alternate([oursUri, kitUri], (uri) => ['--no-extents', uri, 'null:'])) as [number, number];
    const o = { read: mb / oursR, write: mb / oursW };
    const k = { read: mb / kitR, write: mb / kitW };

    const f = (v: number): string => v.toFixed(0).padStart(8);
    console.log(`data: ${SIZE >> 20} MiB random; nbdcopy over unix sockets; MB/s, best of ${RUNS}`);
    console.log('op        ours   nbdkit   ratio');
    console.log(`read  ${f(o.read)} ${f(k.read)}   ${(o.read / k.read).toFixed(2)}`);
    console.log(`write ${f(o.write)} ${f(k.write)}   ${(o.write / k.write).toFixed(2)}`);
    console.log(`RESULT nbd/read-vs-nbdkit ${(o.read / k.read).toFixed(3)}`);
    console.log(`RESULT nbd/write-vs-nbdkit ${(o.write / k.write).toFixed(3)}`);
    console.log(`RESULT nbd/copy-vs-nbdkit ${(o.read / k.read).toFixed(3)}`);
  } finally {
    await stop(ours, () => ours?.stdin?.end());
    await stop(nbdkit, () => nbdkit?.kill('SIGTERM'));
    rmSync(dir, { recursive: true, force: true });
  }
}

const at = process.argv.indexOf(SERVE);
if (at >= 0) await serve(process.argv[at + 1] as string);
else await main();
