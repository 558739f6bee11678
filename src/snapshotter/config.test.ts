import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadSnapshotterConfig, parseSnapshotterConfig, snapshotterOptionsFromConfig } from './config.ts';
import { InvalidArgumentError, NotFoundError } from '../io/errors.ts';

test('parseSnapshotterConfig() reads upstream\'s packaged config and applies the code defaults', () => {
  const cfg = parseSnapshotterConfig(
    JSON.stringify({
      root: '/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd',
      address: '/run/overlaybd-snapshotter/overlaybd.sock',
      verbose: 'info',
      rwMode: 'overlayfs',
      runtimeType: 'containerd',
      logReportCaller: false,
      autoRemoveDev: false,
      mirrorRegistry: [],
    }),
  );
  assert.deepEqual(cfg, {
    root: '/var/lib/containerd/io.containerd.snapshotter.v1.overlaybd',
    address: '/run/overlaybd-snapshotter/overlaybd.sock',
    verbose: 'info',
    logReportCaller: false,
    rwMode: 'overlayfs',
    autoRemoveDev: false,
    asyncRemove: false,
    writableLayerType: 'append',
    mirrorRegistry: [],
    defaultFsType: 'ext4',
    rootfsQuota: '',
    tenant: -1,
    turboFsType: ['erofs', 'ext4'],
    runtimeType: 'containerd',
    exporterConfig: { enable: false, uriPrefix: '/metrics', port: 9863 },
    attachOnPull: true,
  });
});

test('parseSnapshotterConfig() normalises modes, appends turbo fs types, keeps defaults for null and nested omissions', () => {
  const cfg = parseSnapshotterConfig(
    '{"rwMode":"weird","writableLayerType":"sparse","turboFsType":["ext4"],"mirrorRegistry":[{"host":"localhost:5000","insecure":true},{"host":"h"}],"exporterConfig":{"enable":true},"tenant":null,"unknown":1}',
  );
  assert.equal(cfg.rwMode, 'overlayfs');
  assert.equal(cfg.writableLayerType, 'sparse');
  assert.deepEqual(cfg.turboFsType, ['ext4', 'erofs']);
  assert.deepEqual(cfg.mirrorRegistry, [{ host: 'localhost:5000', insecure: true }, { host: 'h', insecure: false }]);
  assert.deepEqual(cfg.exporterConfig, { enable: true, uriPrefix: '/metrics', port: 9863 });
  assert.equal(cfg.tenant, -1);
  assert.equal(parseSnapshotterConfig('{"rwMode":"dev"}').rwMode, 'dev');
  const o = snapshotterOptionsFromConfig(parseSnapshotterConfig('{"rwMode":"dir","autoRemoveDev":true}'));
  assert.equal(o.rwMode, 'dir');
  assert.equal(o.autoRemoveDev, true);
});

test('parseSnapshotterConfig() names the key of a wrongly typed value', () => {
  const cases: [string, RegExp][] = [
    ['{"autoRemoveDev":"yes"}', /autoRemoveDev must be a boolean/],
    ['{"root":1}', /root must be a string/],
    ['{"tenant":1.5}', /tenant must be an integer/],
    ['{"mirrorRegistry":{}}', /mirrorRegistry must be an array/],
    ['{"mirrorRegistry":[{"insecure":"no"}]}', /mirrorRegistry\[0\]\.insecure must be a boolean/],
    ['{"exporterConfig":{"port":"80"}}', /exporterConfig\.port must be an integer/],
    ['{"turboFsType":[1]}', /turboFsType must be an array of strings/],
    ['[]', /the top level must be an object/],
    ['{', /invalid JSON/],
  ];
  for (const [text, re] of cases) assert.throws(() => parseSnapshotterConfig(text, 'c.json'), (e: Error) => e instanceof InvalidArgumentError && re.test(e.message), text);
});

test('loadSnapshotterConfig() reads a file and reports a missing one as NotFound', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'obd-sn-config-'));
  try {
    await writeFile(join(dir, 'config.json'), '{"root":"/r","address":"/a.sock"}');
    assert.equal((await loadSnapshotterConfig(join(dir, 'config.json'))).address, '/a.sock');
    await assert.rejects(loadSnapshotterConfig(join(dir, 'missing.json')), NotFoundError);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
