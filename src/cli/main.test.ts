import { test } from 'node:test';
import assert from 'node:assert/strict';
import { COMMANDS, main } from './main.ts';
import { memoryIo } from './io.ts';

test('every entry of the command table loads the command of its name', async () => {
  const names = COMMANDS.map((c) => c.name);
  assert.equal(new Set(names).size, names.length, 'names are unique');
  for (const entry of COMMANDS) {
    const command = await entry.load();
    assert.equal(command.name, entry.name);
    assert.ok(command.summary.length > 0 && command.usage.length > 0, `${entry.name} has a summary and a usage`);
  }
});

test('obd --help lists every command with its summary; an unknown command exits 2', async () => {
  const io = memoryIo();
  assert.equal(await main(['--help'], io), 0);
  for (const entry of COMMANDS) assert.match(io.stdout, new RegExp(`^  ${entry.name} +\\S`, 'm'));
  const bad = memoryIo();
  assert.equal(await main(['no-such-command'], bad), 2);
  assert.match(bad.stderr, /unknown command 'no-such-command'/);
});
