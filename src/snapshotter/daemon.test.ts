import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runSnapshotterDaemon } from './daemon.ts';
import { createSnapshotterClient } from './grpc-client.ts';
import { parseSnapshotterConfig } from './config.ts';
import { InvalidArgumentError, NotFoundError, UnsupportedError } from '../io/errors.ts';

test('runSnapshotterDaemon() serves the config\'s socket and metrics until aborted, then cleans up', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-daemon-'));
  const address = join(dir, 'run', 'obd.sock');
  const file = join(dir, 'config.json');
  await writeFile(file, JSON.stringify({ root: join(dir, 'root'), address, exporterConfig: { enable: true, port: 0 } }));
  const ac = new AbortController();
  let ready!: (v: { metricsPort?: number }) => void;
  const readyP = new Promise<{ metricsPort?: number }>((r) => (ready = r));
  const done = runSnapshotterDaemon(file, { signal: ac.signal, handleSignals: false, metricsHost: '127.0.0.1', onReady: ready });
  try {
    const { metricsPort } = await readyP;
    const client = createSnapshotterClient(address);
    await client.prepare('a', '');
    await assert.rejects(client.stat('missing'), NotFoundError);
    await client.close();
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    assert.match(text, /^is_alive 1$/m);
    assert.match(text, /^grpc_error_count\{function="Stat"\} 1$/m);
    assert.match(text, /^grpc_latency_seconds_count\{function="Prepare"\} 1$/m);
    assert.match(text, /^grpc_latency_seconds_bucket\{function="Prepare",le="52.4288"\} 1$/m);
    assert.equal((await fetch(`http://127.0.0.1:${metricsPort}/other`)).status, 404);
  } finally {
    ac.abort();
    await done;
  }
  await assert.rejects(stat(address), { code: 'ENOENT' }, 'the socket is removed');
  // The root is released: a new daemon can open it.
  const ac2 = new AbortController();
  ac2.abort();
  await runSnapshotterDaemon(file, { signal: ac2.signal, handleSignals: false });
  await rm(dir, { recursive: true, force: true });
});

test('runSnapshotterDaemon() refuses missing configs, empty addresses and unsupported features', async () => {
  await assert.rejects(runSnapshotterDaemon('/nonexistent/obd/config.json', { handleSignals: false }), NotFoundError);
  await assert.rejects(runSnapshotterDaemon(parseSnapshotterConfig('{"root":"/tmp/x"}'), { handleSignals: false }), InvalidArgumentError);
  await assert.rejects(runSnapshotterDaemon(parseSnapshotterConfig('{"root":"/tmp/x","address":"/tmp/x.sock","runtimeType":"docker"}'), { handleSignals: false }), UnsupportedError);
  await assert.rejects(runSnapshotterDaemon(parseSnapshotterConfig('{"root":"/tmp/x","address":"/tmp/x.sock","rootfsQuota":"20g"}'), { handleSignals: false }), UnsupportedError);
});
