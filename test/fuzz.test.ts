import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fuzz } from './support/fuzz.ts';

test('mutated and truncated vectors end in a typed error or a correct read', async () => {
  const r = await fuzz({ count: 1500, seed: 1 });
  assert.equal(r.runs, 1500);
  assert.deepEqual(r.failures.slice(0, 5), []);
  // the mutations must actually exercise both outcomes
  assert.ok(r.typed > 100, `only ${r.typed} typed errors`);
  assert.ok(r.ok > 100, `only ${r.ok} successful reads`);
});
