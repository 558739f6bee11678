/**
 * The built CLI (`node dist/src/cli/bin/obd.js`), as a user runs it: benchmarks time the
 * compiled JavaScript, not the TypeScript loader of the test runner.
 *
 * @example
 * ```ts
 * await ensureBuilt((line) => console.log(`# ${line}`));
 * spawn(OBD[0], [...OBD.slice(1), 'convert', src, dst]);
 * ```
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
/**
 * `[node, obd.js]`, of this checkout, or of the checkout OBD_BENCH_DIST names (built
 * there beforehand): two builds compared in alternating runs of one benchmark.
 */
export const OBD = [process.execPath, join(process.env['OBD_BENCH_DIST'] ?? REPO_ROOT, 'dist', 'src', 'cli', 'bin', 'obd.js')];

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : e.name.endsWith('.test.ts') ? 0 : statSync(p).mtimeMs);
  }
  return t;
}

/** `tsc -p tsconfig.build.json` when dist is missing or older than src (an OBD_BENCH_DIST build must exist). */
export async function ensureBuilt(log: (line: string) => void): Promise<void> {
  const bin = OBD.at(-1) as string;
  if (process.env['OBD_BENCH_DIST'] !== undefined) {
    if (!existsSync(bin)) throw new Error(`Cannot run the benchmark: ${bin} (OBD_BENCH_DIST) is not built`);
    return;
  }
  if (existsSync(bin) && statSync(bin).mtimeMs >= newestMtime(join(REPO_ROOT, 'src'))) return;
  log('dist is stale: building (tsc -p tsconfig.build.json)');
  await new Promise<void>((resolve) => {
    execFile('npx', ['tsc', '-p', 'tsconfig.build.json'], { cwd: REPO_ROOT, timeout: 600_000 }, (err, stdout) => {
      // tsc emits even with type errors elsewhere; a missing binary fails below.
      if (err) log(`tsc reported errors (output emitted anyway): ${stdout.split('\n').slice(0, 5).join(' | ')}`);
      resolve();
    });
  });
  if (!existsSync(bin)) throw new Error(`Cannot run the benchmark: ${bin} was not built`);
}
