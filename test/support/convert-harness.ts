/**
 * Shared harness of the convertor's acceptance tests: a temp directory with a run dir
 * and a work dir, `obd` run in-process, `convert` returning the `--json` result line,
 * mounts that are always unmounted, and a last-resort cleanup (sessions, mounts and loop
 * devices under the temp directory) for tests that failed half-way.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { main } from '../../src/cli/main.ts';
import { memoryIo } from '../../src/cli/io.ts';
import { listSessions } from '../../src/attach/session.ts';
import { FIXTURES } from './shared.ts';

export const HELLO = join(FIXTURES, 'hello-world-oci');
export const HELLO_LAYER = join(HELLO, 'blobs', 'sha256', '719385e32844401d57ecfd3eacab360bf551a1491c05b85806ed8f1b08d792f6');

export interface ConvertResultLine {
  target: string;
  digest: string;
  manifests: number;
  layersConverted: number;
  layersReused: number;
  blobsMounted: number;
  blobsUploaded: number;
}

export interface ConvertHarness {
  readonly dir: string;
  readonly runDir: string;
  readonly work: string;
  obd(...args: string[]): Promise<string>;
  obdFails(args: string[]): Promise<{ code: number; stderr: string }>;
  /** `obd convert ARGS --run-dir … --json`: the result line. */
  convert(...args: string[]): Promise<ConvertResultLine>;
  withMount(ref: string, fn: (mnt: string) => Promise<void> | void, extra?: string[]): Promise<void>;
  assertNothingLeft(): void;
  cleanup(): Promise<void>;
}

function mounts(): string {
  return readFileSync('/proc/mounts', 'utf8');
}

export function createConvertHarness(prefix: string): ConvertHarness {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const runDir = join(dir, 'run');
  const work = join(dir, 'work');
  const obd = async (...args: string[]): Promise<string> => {
    const io = memoryIo();
    const code = await main(args, io);
    assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
    return io.stdout;
  };
  const assertNothingLeft = (): void => {
    assert.ok(!mounts().includes(dir), `mounts left under ${dir}:\n${mounts()}`);
    const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout;
    assert.ok(!loops.includes(dir), `loop devices left: ${loops}`);
  };
  return {
    dir,
    runDir,
    work,
    obd,
    async obdFails(args) {
      const io = memoryIo();
      const code = await main(args, io);
      assert.notEqual(code, 0, `obd ${args.join(' ')} should fail`);
      return { code, stderr: io.stderr };
    },
    async convert(...args) {
      const out = await obd('convert', ...args, '--json');
      const lines = out.trim().split('\n').map((l) => JSON.parse(l) as { type: string });
      return lines.find((l) => l.type === 'result') as unknown as ConvertResultLine;
    },
    async withMount(ref, fn, extra = []) {
      const mnt = mkdtempSync(join(dir, 'mnt-'));
      await obd('mount', ref, mnt, '--run-dir', runDir, ...extra);
      try {
        await fn(mnt);
      } finally {
        await obd('umount', mnt, '--run-dir', runDir);
      }
      assertNothingLeft();
    },
    assertNothingLeft,
    async cleanup() {
      for (const s of await listSessions(runDir)) {
        try {
          process.kill(s.pid, 'SIGTERM');
        } catch {
          // gone
        }
      }
      await new Promise((r) => setTimeout(r, 500));
      for (const line of mounts().split('\n').reverse()) {
        const mp = line.split(' ')[1];
        if (mp !== undefined && mp.startsWith(dir)) spawnSync('umount', ['-l', mp]);
      }
      for (const line of spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout.split('\n')) {
        if (line.includes(dir)) spawnSync('losetup', ['-d', line.split(':')[0] as string]);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** /hello of the original amd64 hello-world layer. */
export function originalHello(): Buffer {
  const tar = gunzipSync(readFileSync(HELLO_LAYER));
  for (let at = 0; at + 512 <= tar.length; ) {
    const name = tar.subarray(at, at + 100).toString().replace(/\0.*$/s, '');
    const size = parseInt(tar.subarray(at + 124, at + 136).toString().replace(/\0.*$/s, '').trim(), 8);
    if (name === 'hello') return tar.subarray(at + 512, at + 512 + size);
    at += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error('no /hello in the original layer');
}

/** Manifests and blobs of a layout (empty when nothing was pushed). */
export function layoutContent(layout: string): { manifests: number; blobs: string[] } {
  if (!existsSync(join(layout, 'index.json'))) return { manifests: 0, blobs: [] };
  const idx = JSON.parse(readFileSync(join(layout, 'index.json'), 'utf8')) as { manifests: unknown[] };
  return { manifests: idx.manifests.length, blobs: readdirSync(join(layout, 'blobs', 'sha256')) };
}
