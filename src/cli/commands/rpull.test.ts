import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { servePullSocket } from '../../snapshotter/pull-socket.ts';
import { rpullCommand } from './rpull.ts';
import { memoryIo } from '../io.ts';

test('obd rpull hands its work to the daemon socket: paths made absolute, the docker config named, --no-daemon added', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-pull-'));
  const seen: string[][] = [];
  const server = await servePullSocket(join(dir, 'rpull.sock'), async (argv) => {
    seen.push(argv);
    return 'layer 0 …\nreg/app:obd: image created\n';
  });
  try {
    const io = memoryIo();
    await rpullCommand.run(['reg/app:obd', '-n', 'ns1', '--cred-file', 'cred.json', '--plain-http', 'reg', '--daemon', server.path], io);
    assert.equal(io.stdout, 'layer 0 …\nreg/app:obd: image created\n');
    const [argv] = seen;
    assert.ok(argv !== undefined);
    assert.deepEqual(argv.slice(0, 4), ['reg/app:obd', '-n', 'ns1', '--cred-file']);
    assert.equal(argv[4], join(process.cwd(), 'cred.json'));
    assert.deepEqual(argv.slice(5, 7), ['--plain-http', 'reg']);
    assert.equal(argv[7], '--docker-config');
    assert.ok(argv[8]?.endsWith('config.json'));
    assert.equal(argv.at(-1), '--no-daemon');
    assert.equal(argv.includes('--daemon'), false);
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
