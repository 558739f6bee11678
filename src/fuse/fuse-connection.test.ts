import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseMountInfo } from './fuse-connection.ts';
import { InvalidArgumentError } from '../io/errors.ts';
import { abortFuseConnection } from './fuse-connection.ts';

test('parseMountInfo() reads device numbers, optional fields and escaped paths', () => {
  const text = [
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '64 22 0:52 / /tmp/obd\\040mnt rw,nosuid,nodev,relatime shared:33 master:2 - fuse.obd obd rw,user_id=0,group_id=0,default_permissions,allow_other',
    'garbage',
    '',
  ].join('\n');
  assert.deepEqual(parseMountInfo(text), [
    { mountpoint: '/', fstype: 'ext4', source: '/dev/vda', major: 254, minor: 0 },
    { mountpoint: '/tmp/obd mnt', fstype: 'fuse.obd', source: 'obd', major: 0, minor: 52 },
  ]);
});

test('abortFuseConnection() rejects impossible connection numbers', async () => {
  await assert.rejects(abortFuseConnection(-1), InvalidArgumentError);
  await assert.rejects(abortFuseConnection(1.5), InvalidArgumentError);
});
