/**
 * Issue 3 acceptance: remote export through a fault-injecting proxy in front of a real
 * registry stays byte-identical (every fault kind at 10%, and all mixed); flipped bytes
 * are caught by the ZFile CRC and fetched again; stalls time out and are retried; a
 * warm cache makes no blob request, also from a new process.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';
import { RemoteAccess } from '../src/image/remote-access.ts';
import { openDevice } from '../src/device/open-device.ts';
import { parseDeviceConfig } from '../src/image/device-config.ts';
import { exportRaw } from '../src/device/export-raw.ts';
import { startRegistry, type TestRegistry } from './support/registry.ts';
import { FaultProxy, FAULT_KINDS, type FaultRates } from './fakes/fault-proxy.ts';
import { FIXTURES, REPO_ROOT } from './support/shared.ts';
import { assertSameSparseFile } from './support/sparse-compare.ts';

const LAYOUT = `oci:${join(FIXTURES, 'hello-world-converted')}:amd64-converted`;
const DIGEST = 'sha256:022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d';

let dir = '';
let reg: TestRegistry;
let localRaw = '';

async function obd(...args: string[]): Promise<string> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
  return io.stdout;
}

function configThrough(proxy: FaultProxy): string {
  const host = new URL(proxy.url).host;
  const path = join(dir, `cfg-${host.replace(':', '_')}.json`);
  writeFileSync(path, JSON.stringify({ repoBlobUrl: `http://${host}/v2/obd/hello/blobs`, lowers: [{ digest: DIGEST, size: 642560 }] }));
  return path;
}

async function exportThrough(proxy: FaultProxy, out: string): Promise<void> {
  const access = new RemoteAccess({ reader: { refillSize: 16384, maxRequestBytes: 16384, stallTimeoutMs: 1500, requestTimeoutMs: 5000, retries: 8, backoffMs: 5 } });
  try {
    const cfg = parseDeviceConfig(JSON.stringify({ repoBlobUrl: `http://${new URL(proxy.url).host}/v2/obd/hello/blobs`, lowers: [{ digest: DIGEST, size: 642560 }] }), dir);
    const device = await openDevice(cfg, { remote: access.opener() });
    try {
      await exportRaw(device, out, { overwrite: true });
    } finally {
      await device.close();
    }
  } finally {
    await access.close();
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-faults-'));
  reg = await startRegistry({ auth: 'none' });
  await obd('push', LAYOUT, `${reg.host}/obd/hello:v1`, '--plain-http', reg.host);
  localRaw = join(dir, 'local.raw');
  await obd('export', LAYOUT, localRaw);
});
after(async () => {
  await reg?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('remote export through faults', () => {
  const cases: Array<[string, FaultRates]> = [
    ...FAULT_KINDS.map((k): [string, FaultRates] => [k, { [k]: 0.1 }]),
    ['all kinds mixed', Object.fromEntries(FAULT_KINDS.map((k) => [k, 0.1 / FAULT_KINDS.length * 2]))],
  ];
  for (const [name, rates] of cases) {
    test(`10% ${name}: the export is byte-identical`, { timeout: 180_000 }, async () => {
      // faults only on blob reads: the layer data path under test
      const proxy = await FaultProxy.start({ upstream: `http://${reg.host}`, seed: 7, rates, stallMaxMs: 4000, eligible: (req) => req.url?.includes('/blobs/') === true });
      try {
        const out = join(dir, 'faulty.raw');
        await exportThrough(proxy, out);
        assertSameSparseFile(out, localRaw);
        const c = proxy.counters;
        const injected = Object.values(c.faults).reduce((a, b) => a + b, 0);
        assert.ok(injected >= 2 && c.blobGets >= 30, `${injected} faults injected in ${c.blobGets} blob requests`);
        rmSync(out);
      } finally {
        await proxy.close();
      }
    });
  }
});

test('a warm cache makes no blob request, also after a process restart', { timeout: 180_000 }, async () => {
  const proxy = await FaultProxy.start({ upstream: `http://${reg.host}` });
  try {
    const cfg = configThrough(proxy);
    const cache = join(dir, 'cache');
    const out = join(dir, 'cached.raw');
    await obd('export', cfg, out, '--cache-dir', cache, '-f');
    const cold = proxy.counters.blobGets;
    assert.ok(cold > 0);
    assertSameSparseFile(out, localRaw);
    proxy.resetCounters();
    await obd('export', cfg, out, '--cache-dir', cache, '-f');
    assert.equal(proxy.counters.blobGets, 0, 'second export in the same process fetched blobs');
    const child = spawnSync(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/bin/obd.ts'), 'export', cfg, out, '--cache-dir', cache, '-f'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      timeout: 120_000,
    });
    assert.equal(child.status, 0, child.stderr);
    assert.equal(proxy.counters.blobGets, 0, 'export in a new process fetched blobs');
    assertSameSparseFile(out, localRaw);
  } finally {
    await proxy.close();
  }
});

test('background download fetches the whole layer, verifies it and switches reads to the local file', { timeout: 120_000 }, async () => {
  const proxy = await FaultProxy.start({ upstream: `http://${reg.host}` });
  const access = new RemoteAccess();
  try {
    const layerDir = join(dir, 'layer0');
    const { mkdirSync, readFileSync } = await import('node:fs');
    const { createHash } = await import('node:crypto');
    mkdirSync(layerDir, { recursive: true });
    const cfg = parseDeviceConfig(
      JSON.stringify({
        repoBlobUrl: `http://${new URL(proxy.url).host}/v2/obd/hello/blobs`,
        lowers: [{ digest: DIGEST, size: 642560, dir: layerDir }],
        download: { enable: true, delay: 0, delayExtra: 1, maxMBps: 0 },
      }),
      dir,
    );
    const device = await openDevice(cfg, { remote: access.opener(cfg.download) });
    try {
      const outcomes = await access.downloadsDone();
      assert.deepEqual(outcomes.map((o) => o.state), ['committed']);
      const local = readFileSync(join(layerDir, 'overlaybd.commit'));
      assert.equal(`sha256:${createHash('sha256').update(local).digest('hex')}`, DIGEST);
      proxy.resetCounters();
      const out = join(dir, 'downloaded.raw');
      await exportRaw(device, out, { overwrite: true });
      assert.equal(proxy.counters.blobGets, 0, 'reads after the switch went to the registry');
      assertSameSparseFile(out, localRaw);
    } finally {
      await device.close();
    }
  } finally {
    await access.close();
    await proxy.close();
  }
});
