import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AlreadyExistsError,
  DataCorruptionError,
  errorClassOf,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  UnavailableError,
  UnsupportedError,
} from './errors.ts';

test('errorClassOf rebuilds every domain error from its code, and knows no other code', () => {
  for (const Cls of [NotFoundError, AlreadyExistsError, InvalidArgumentError, FailedPreconditionError, PermissionDeniedError, UnavailableError, DataCorruptionError, UnsupportedError]) {
    const original = new Cls('Cannot do it: because');
    const Rebuilt = errorClassOf(original.code);
    assert.equal(Rebuilt, Cls);
    const again = new (Rebuilt as typeof Cls)(original.message);
    assert.equal(again.code, original.code);
  }
  assert.equal(errorClassOf('ERR_SOMETHING_ELSE'), undefined);
  assert.equal(errorClassOf(undefined), undefined);
  assert.equal(errorClassOf(42), undefined);
});
