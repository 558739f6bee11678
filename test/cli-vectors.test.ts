/**
 * Issue 2 acceptance through the `obd` CLI: for every vector with a documented input and
 * options (../shared/vectors/README.md), `obd` writes a byte-identical file.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';
import { vector, sha256 } from './support/shared.ts';
import { fill, pat, xs, zf1, zfOdd, zf768 } from './support/generators.ts';

let dir = '';
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'obd-cli-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

async function obd(...args: string[]): Promise<string> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
  return io.stdout;
}

function fileSha(path: string): string {
  return sha256(readFileSync(path));
}

const ZFILE_CASES: Array<[file: string, input: () => Uint8Array, args: string[]]> = [
  ['zf_lz4_bs4_crc.zfile', zf1, []],
  ['zf_lz4_bs16_crc.zfile', zf1, ['--bs', '16']],
  ['zf_lz4_bs32_crc.zfile', zf1, ['--bs', '32']],
  ['zf_zstd_bs4_crc.zfile', zf1, ['--algorithm', 'zstd']],
  ['zf_zstd_bs16_crc.zfile', zf1, ['--algorithm', 'zstd', '--bs', '16']],
  ['zf_zstd_bs32_crc.zfile', zf1, ['--algorithm', 'zstd', '--bs', '32']],
  ['zf_lz4_bs4_nocrc.zfile', zf1, ['--no-verify']],
  ['zf_lz4_bs32_nocrc.zfile', zf1, ['--no-verify', '--bs', '32']],
  ['zf_zstd_bs4_nocrc.zfile', zf1, ['--no-verify', '--algorithm', 'zstd']],
  ['zf_zstd_bs32_nocrc.zfile', zf1, ['--no-verify', '--algorithm', 'zstd', '--bs', '32']],
  ['zf_lz4_bs4_crc.zfile.tar', zf1, ['-t']],
  ['zf_odd_lz4_bs4_crc.zfile', zfOdd, []],
  ['zf_odd_zstd_bs16_crc.zfile', zfOdd, ['--algorithm', 'zstd', '--bs', '16']],
  ['zf_768k_lz4_bs64_crc.zfile', zf768, ['--bs', '64']],
  ['zf_lz4_bs64_crc_UNREADABLE.zfile', zf1, ['--bs', '64']],
];

test('obd zfile reproduces every zfile vector byte for byte and decompresses it back', async () => {
  const inputs = new Map<() => Uint8Array, string>();
  for (const [file, input, args] of ZFILE_CASES) {
    let src = inputs.get(input);
    if (src === undefined) {
      src = join(dir, `input-${inputs.size}`);
      writeFileSync(src, input());
      inputs.set(input, src);
    }
    const out = join(dir, file);
    await obd('zfile', src, out, ...args);
    assert.equal(fileSha(out), fileSha(vector('zfile', file)), file);
    const back = join(dir, `${file}.x`);
    await obd('zfile', '-x', vector('zfile', file), back);
    assert.equal(fileSha(back), sha256(input()), `${file} -x`);
    if (!args.includes('--no-verify')) assert.match(await obd('zfile', '--verify', vector('zfile', file)), /blocks verified/);
  }
});

const U1 = '00000000-0000-4000-8000-0000000000a1';
const U2 = '00000000-0000-4000-8000-0000000000a2';

async function writeOps(data: string, index: string, ops: Array<[op: 'write' | 'trim', offset: number, bytes: Uint8Array | number]>): Promise<void> {
  let n = 0;
  for (const [op, offset, bytes] of ops) {
    if (op === 'write') {
      const f = join(dir, `op-${n++}`);
      writeFileSync(f, bytes as Uint8Array);
      await obd('write', data, index, String(offset), f);
    } else {
      await obd('trim', data, index, String(offset), String(bytes));
    }
  }
}

test('obd create/write/trim/commit reproduces the L1 and L2 commits of every documented kind', async () => {
  const l1 = { data: join(dir, 'L1.data'), index: join(dir, 'L1.index') };
  await obd('create', l1.data, l1.index, '1');
  await writeOps(l1.data, l1.index, [
    ['write', 0, pat(65536, 0)],
    ['write', 1048576, xs(4096, 1)],
    ['write', 8389120, fill(1536, 0x5a)],
    ['write', 16384, fill(8192, 0xab)],
    ['write', 2097152, pat(131072, 7)],
    ['trim', 2129920, 16384],
  ]);
  const cases: Array<[file: string, args: string[]]> = [
    ['L1.commit', []],
    ['L1.lz4.commit', ['-z']],
    ['L1.zstd.commit', ['-z', '--algorithm', 'zstd']],
    ['L1.lz4.bs32.commit', ['-z', '--bs', '32']],
    ['L1.lz4.commit.tar', ['-z', '-t']],
  ];
  for (const [file, args] of cases) {
    const out = join(dir, `out-${file}`);
    await obd('commit', l1.data, l1.index, out, '--uuid', U1, '-m', 'oracle-L1', ...args);
    assert.equal(fileSha(out), fileSha(vector('lsmt', file)), file);
  }

  const l2 = { data: join(dir, 'L2.data'), index: join(dir, 'L2.index') };
  await obd('create', l2.data, l2.index, '1', '-u', U1);
  await writeOps(l2.data, l2.index, [
    ['write', 4096, fill(4096, 0xcd)],
    ['write', 1050624, xs(1024, 2)],
    ['trim', 8388608, 4096],
    ['write', 67108864, pat(16384, 3)],
  ]);
  for (const [file, args] of [['L2.commit', []], ['L2.lz4.commit', ['-z']]] as Array<[string, string[]]>) {
    const out = join(dir, `out-${file}`);
    await obd('commit', l2.data, l2.index, out, '--uuid', U2, '-p', U1, ...args);
    assert.equal(fileSha(out), fileSha(vector('lsmt', file)), file);
  }
});

test('obd commit of the upstream RW pair and of a sealed file gives L1.commit', async () => {
  const data = join(dir, 'rw.data');
  const index = join(dir, 'rw.index');
  copyFileSync(vector('lsmt', 'L1.rw.data'), data);
  copyFileSync(vector('lsmt', 'L1.rw.index'), index);
  const out = join(dir, 'rw.commit');
  await obd('commit', data, index, out, '--uuid', U1, '-m', 'oracle-L1');
  assert.equal(fileSha(out), fileSha(vector('lsmt', 'L1.commit')));
  const sealedOut = join(dir, 'sealed.commit');
  await obd('commit', vector('lsmt', 'L1.sealed'), sealedOut, '--commit_sealed', '--uuid', U1, '-m', 'oracle-L1');
  assert.equal(fileSha(sealedOut), fileSha(vector('lsmt', 'L1.commit')));
  // seal in place, then commit the sealed file
  await obd('commit', data, index, '--seal');
  const resealed = join(dir, 'resealed.commit');
  await obd('commit', data, resealed, '--commit_sealed', '--uuid', U1, '-m', 'oracle-L1');
  assert.equal(fileSha(resealed), fileSha(vector('lsmt', 'L1.commit')));
});

test('obd merge of the [L1, L2] stack reproduces L1L2.merged.lz4', async () => {
  for (const [l1, l2] of [['L1.commit', 'L2.commit'], ['L1.lz4.commit', 'L2.lz4.commit'], ['L1.lz4.commit.tar', 'L2.lz4.commit']]) {
    const config = join(dir, 'merge.json');
    writeFileSync(config, JSON.stringify({ lowers: [{ file: vector('lsmt', l1 as string) }, { file: vector('lsmt', l2 as string) }] }));
    const out = join(dir, 'merged.lz4');
    await obd('merge', config, out, '-f');
    assert.equal(fileSha(out), fileSha(vector('stack', 'L1L2.merged.lz4')), `${l1} + ${l2}`);
  }
});

test('obd info describes a tar(ZFile(LSMT)) blob', async () => {
  const text = await obd('info', vector('lsmt', 'L1.lz4.commit.tar'));
  assert.match(text, /tar wrapper: payload 17572 bytes at offset 1536/);
  assert.match(text, /zfile: lz4, 4 KiB blocks, with block CRCs/);
  assert.match(text, /uuid 00000000-0000-4000-8000-0000000000A1/);
  assert.match(text, /6 valid entries \(1 zeroed\)/);
  const json = JSON.parse(await obd('info', '--json', vector('lsmt', 'L2.commit'))) as { lsmt: { trailer: { indexSize: number } } };
  assert.equal(json.lsmt.trailer.indexSize, 256);
});

test('obd reports bad input with a clear error and a non-zero exit code', async () => {
  const io = memoryIo();
  assert.equal(await main(['zfile', '--bs', '128', vector('zfile', 'zf_lz4_bs4_crc.zfile'), join(dir, 'x')], io), 2);
  assert.match(io.stderr, /Invalid --bs 128/);
  const io2 = memoryIo();
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{"lowers": [{"file": 7}]}');
  assert.equal(await main(['export', bad, join(dir, 'y.raw')], io2), 2);
  assert.match(io2.stderr, /lowers\[0\]\.file must be a string/);
  const io3 = memoryIo();
  const truncated = join(dir, 'trunc.commit');
  writeFileSync(truncated, readFileSync(vector('lsmt', 'L1.commit')).subarray(0, 100000));
  writeFileSync(bad, JSON.stringify({ lowers: [{ file: truncated }] }));
  assert.equal(await main(['export', bad, join(dir, 'z.raw')], io3), 5);
  assert.match(io3.stderr, /layer 0 .*trunc.commit.* trailer: bad LSMT magic/);
});
