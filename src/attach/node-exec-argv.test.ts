import { test } from 'node:test';
import assert from 'node:assert/strict';
import { childExecArgv } from './node-exec-argv.ts';

test('childExecArgv drops the test runner, inspector and profiler options with their separate values', () => {
  assert.deepEqual(childExecArgv(['--import', 'tsx', '--test-name-pattern', 'standby process', '--max-old-space-size=512']), ['--import', 'tsx', '--max-old-space-size=512']);
  assert.deepEqual(childExecArgv(['--test', '--test-reporter=spec', '--test-only', '--enable-source-maps']), ['--enable-source-maps']);
  assert.deepEqual(childExecArgv(['--inspect-brk', '--inspect-port', '9230', '--cpu-prof', '--cpu-prof-dir', '/tmp/p', '--import', 'tsx']), ['--import', 'tsx']);
  assert.deepEqual(childExecArgv([]), []);
});
