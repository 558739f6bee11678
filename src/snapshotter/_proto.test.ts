import { test } from 'node:test';
import assert from 'node:assert/strict';
import type * as grpc from '@grpc/grpc-js';
import { snapshotsService, warmCodecs } from './_proto.ts';

test('warmCodecs runs every codec of a service once and survives codecs that throw', () => {
  const calls: string[] = [];
  const method = (name: string, fail: boolean): grpc.MethodDefinition<unknown, unknown> =>
    ({
      path: `/x/${name}`,
      requestStream: false,
      responseStream: false,
      requestSerialize: () => {
        calls.push(`${name}:reqSer`);
        if (fail) throw new Error('no such field');
        return Buffer.alloc(0);
      },
      requestDeserialize: () => calls.push(`${name}:reqDe`),
      responseSerialize: () => {
        calls.push(`${name}:resSer`);
        return Buffer.alloc(0);
      },
      responseDeserialize: () => calls.push(`${name}:resDe`),
    }) as unknown as grpc.MethodDefinition<unknown, unknown>;
  warmCodecs({ A: method('A', true), B: method('B', false) });
  for (const m of ['A', 'B']) {
    for (const c of ['reqSer', 'resSer', 'reqDe', 'resDe']) assert.ok(calls.includes(`${m}:${c}`), `${m} ${c}`);
  }
  // The real service: its codecs take the warm-up's messages.
  assert.doesNotThrow(() => warmCodecs(snapshotsService().service));
});
