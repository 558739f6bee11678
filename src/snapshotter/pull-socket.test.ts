import { test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { callPullSocket, servePullSocket } from './pull-socket.ts';
import { AlreadyExistsError, NotFoundError, UnavailableError } from '../io/errors.ts';

test('a pull socket runs the handler with the arguments and answers its output; errors keep their class', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-pull-'));
  try {
    const seen: string[][] = [];
    const server = await servePullSocket(join(dir, 'rpull.sock'), async (argv) => {
      seen.push(argv);
      if (argv[0] === 'missing') throw new NotFoundError('Cannot pull missing: no such image');
      return `pulled ${argv.join(' ')}\n`;
    });
    try {
      assert.equal((await lstat(server.path)).mode & 0o777, 0o600);
      assert.equal(await callPullSocket(server.path, ['reg/app:obd', '--namespace', 'x']), 'pulled reg/app:obd --namespace x\n');
      await assert.rejects(callPullSocket(server.path, ['missing']), (e) => e instanceof NotFoundError && /no such image/.test(e.message));
      assert.deepEqual(seen, [['reg/app:obd', '--namespace', 'x'], ['missing']]);
    } finally {
      await server.close();
    }
    assert.equal(await callPullSocket(server.path, ['reg/app:obd']), undefined, 'no daemon: undefined, the caller pulls itself');
    await writeFile(join(dir, 'plain'), 'x');
    await assert.rejects(servePullSocket(join(dir, 'plain'), async () => ''), AlreadyExistsError);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a daemon that breaks the protocol is an UnavailableError, not a silent local pull', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-pull-'));
  const { createServer } = await import('node:http');
  const path = join(dir, 'rpull.sock');
  const bogus = createServer((_req, res) => res.end('not json'));
  await new Promise<void>((r) => bogus.listen(path, r));
  try {
    await assert.rejects(callPullSocket(path, ['x']), UnavailableError);
  } finally {
    await new Promise<void>((r) => bogus.close(() => r()));
    await rm(dir, { recursive: true, force: true });
  }
});
