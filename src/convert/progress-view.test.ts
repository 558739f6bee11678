import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProgressView } from './progress-view.ts';
import type { ConvertEvent } from './convert-image.ts';

const MiB = 2 ** 20;
const layer = (o: Partial<Extract<ConvertEvent, { type: 'layer' }>>): ConvertEvent => ({ type: 'layer', platform: '', index: 0, count: 2, phase: 'download', bytes: 0, done: false, ...o });

test('ProgressView draws one line per layer: phase, bar, bytes, rate; then the time of a finished phase', () => {
  const v = new ProgressView();
  v.update(layer({ bytes: 0, total: 10 * MiB }), 0);
  v.update(layer({ bytes: 5 * MiB, total: 10 * MiB }), 1000);
  v.update(layer({ index: 1, phase: 'apply', bytes: 0 }), 500);
  v.update(layer({ index: 1, phase: 'apply', bytes: 3 * MiB }), 1500);
  v.update({ type: 'warning', platform: '', message: 'ignored' }, 1500);
  assert.deepEqual(v.render(2000), [
    'layer 1/2  download [##########          ]    5.0/10.0 MiB  2.5 MiB/s',
    'layer 2/2  apply                                   3.0 MiB  2.0 MiB/s',
  ]);
  assert.equal(v.active, 2);
  // Layer 1 moves on to apply: a new phase restarts the clock; layer 2's apply ends.
  v.update(layer({ phase: 'apply', bytes: 0 }), 2000);
  v.update(layer({ index: 1, phase: 'apply', bytes: 8 * MiB, done: true }), 2500);
  v.update(layer({ index: 1, phase: 'apply', bytes: 8 * MiB, done: true }), 9000); // repeated: keeps the first end
  assert.deepEqual(v.render(3000), [
    'layer 1/2  apply                                   0.0 MiB  0.0 MiB/s',
    'layer 2/2  apply                                   8.0 MiB  done in 2.0 s',
  ]);
  assert.equal(v.active, 1);
});

test('ProgressView labels platforms, caps the bar at the total and cuts lines to the width', () => {
  const v = new ProgressView();
  v.update(layer({ platform: 'linux/arm64', phase: 'push', bytes: 30 * MiB, total: 20 * MiB }), 0);
  const [line] = v.render(1000);
  assert.match(line ?? '', /^\[linux\/arm64\] layer 1\/2  push     \[#{20}\]/);
  assert.equal(v.render(1000, 30)[0]?.length, 30);
});
