import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { MALLOC_TUNABLES, tunedEnvironment } from './malloc-tuning.ts';

test('tunedEnvironment restarts only heavy commands on Linux, once, keeping the caller’s own tunables', () => {
  assert.equal(tunedEnvironment('convert', { PATH: '/bin' }, 'linux')?.['GLIBC_TUNABLES'], MALLOC_TUNABLES);
  assert.equal(tunedEnvironment('snapshotter', { GLIBC_TUNABLES: 'glibc.pthread.rseq=0' }, 'linux')?.['GLIBC_TUNABLES'], `glibc.pthread.rseq=0:${MALLOC_TUNABLES}`);
  assert.equal(tunedEnvironment('apply', { PATH: '/bin' }, 'linux')?.['PATH'], '/bin', 'the rest of the environment is kept');
  assert.equal(tunedEnvironment('info', {}, 'linux'), undefined, 'light commands start once');
  assert.equal(tunedEnvironment(undefined, {}, 'linux'), undefined);
  assert.equal(tunedEnvironment('convert', { GLIBC_TUNABLES: MALLOC_TUNABLES }, 'linux'), undefined, 'already restarted');
  assert.equal(tunedEnvironment('convert', { GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0' }, 'linux'), undefined, 'the caller chose');
  assert.equal(tunedEnvironment('convert', { OBD_MALLOC_TUNING: 'off' }, 'linux'), undefined);
  assert.equal(tunedEnvironment('convert', {}, 'darwin'), undefined);
});

test('a restarted command keeps its standard output, error and exit code on pipes', () => {
  const bin = fileURLToPath(new URL('./bin/obd.ts', import.meta.url));
  const env = { ...process.env };
  delete env['GLIBC_TUNABLES'];
  delete env['OBD_MALLOC_TUNING'];
  const help = spawnSync(process.execPath, [...process.execArgv, bin, 'convert', '--help'], { encoding: 'utf8', env });
  assert.equal(help.status, 0, help.stderr);
  assert.match(help.stdout, /^usage: obd convert SRC DST/);
  const bad = spawnSync(process.execPath, [...process.execArgv, bin, 'convert'], { encoding: 'utf8', env });
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /obd convert: Expected SRC DST/);
});
