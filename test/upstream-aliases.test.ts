/**
 * The upstream-named commands (`overlaybd-create`, `overlaybd-commit`, `overlaybd-zfile`,
 * `overlaybd-merge`) run as separate processes with upstream's flag spellings
 * (runtime.md §12), so scripts written for upstream keep working.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, sha256, vector } from './support/shared.ts';
import { pat, zf1 } from './support/generators.ts';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'obd-alias-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function run(bin: string, args: string[], input?: Uint8Array): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src', 'cli', 'bin', `${bin}.ts`), ...args], {
    cwd: REPO_ROOT,
    input,
    encoding: 'buffer',
    timeout: 60_000,
  });
  return { status: r.status, stderr: r.stderr.toString(), stdout: r.stdout.toString() };
}

function ok(bin: string, args: string[], input?: Uint8Array): string {
  const r = run(bin, args, input);
  assert.equal(r.status, 0, `${bin} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

test('overlaybd-zfile compresses a file and standard input as upstream, and decompresses', () => {
  const src = join(dir, 'zf1');
  writeFileSync(src, zf1());
  ok('overlaybd-zfile', [src, join(dir, 'a.zfile'), '--bs', '16']);
  assert.equal(sha256(readFileSync(join(dir, 'a.zfile'))), sha256(readFileSync(vector('zfile', 'zf_lz4_bs16_crc.zfile'))));
  // stdin form: `overlaybd-zfile DST`, fed in one go (a pipe delivers short chunks; the writer re-blocks)
  ok('overlaybd-zfile', [join(dir, 'b.zfile'), '--algorithm', 'zstd'], zf1());
  assert.equal(sha256(readFileSync(join(dir, 'b.zfile'))), sha256(readFileSync(vector('zfile', 'zf_zstd_bs4_crc.zfile'))));
  ok('overlaybd-zfile', ['-x', join(dir, 'b.zfile'), join(dir, 'b.out')]);
  assert.equal(sha256(readFileSync(join(dir, 'b.out'))), sha256(zf1()));
  const bad = run('overlaybd-zfile', [src, join(dir, 'c.zfile'), '--bs', '3']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--bs 3/);
});

test('overlaybd-create, overlaybd-commit -z -t -p and overlaybd-merge --compress=false work with upstream flags', () => {
  const data = join(dir, 'w.data');
  const index = join(dir, 'w.index');
  ok('overlaybd-create', [data, index, '1', '-u', '00000000-0000-4000-8000-0000000000a1']);
  const payload = join(dir, 'payload');
  writeFileSync(payload, pat(65536, 0));
  ok('obd', ['write', data, index, '0', payload]);
  const out = join(dir, 'layer.commit');
  ok('overlaybd-commit', [data, index, out, '-z', '-t', '--uuid', '00000000-0000-4000-8000-0000000000a2', '-p', '00000000-0000-4000-8000-0000000000a1']);
  const info = ok('obd', ['info', out]);
  assert.match(info, /tar wrapper/);
  assert.match(info, /uuid 00000000-0000-4000-8000-0000000000A2, parent 00000000-0000-4000-8000-0000000000A1/);
  const exists = run('overlaybd-commit', [data, index, out]);
  assert.equal(exists.status, 4, exists.stderr);
  assert.match(exists.stderr, /exists/);
  const config = join(dir, 'config.v1.json');
  writeFileSync(config, JSON.stringify({ lowers: [{ file: vector('lsmt', 'L1.commit') }, { file: vector('lsmt', 'L2.commit') }] }));
  const merged = join(dir, 'merged.lsmt');
  ok('overlaybd-merge', [config, merged, '--compress=false']);
  const mergedInfo = ok('obd', ['info', merged]);
  assert.doesNotMatch(mergedInfo, /zfile:/);
  assert.match(mergedInfo, /11 valid entries/);
});
