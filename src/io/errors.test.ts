import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as errors from './errors.ts';

test('errorClassOf rebuilds every domain error from its code, and knows no other code', () => {
  const { errorClassOf } = errors;
  const classes: Array<new (message: string) => errors.ObdError> = [errors.NotFoundError, errors.AlreadyExistsError, errors.InvalidArgumentError];
  classes.push(errors.FailedPreconditionError);
  classes.push(errors.PermissionDeniedError, errors.UnavailableError, errors.DataCorruptionError, errors.UnsupportedError);
  for (const Cls of classes) {
    const original = new Cls('Cannot do it: because');
    const Rebuilt = errorClassOf(original.code);
    assert.equal(Rebuilt, Cls);
    const again = new (Rebuilt as new (message: string) => errors.ObdError)(original.message);
    assert.equal(again.code, original.code);
  }
  assert.equal(errorClassOf('ERR_SOMETHING_ELSE'), undefined);
  assert.equal(errorClassOf(undefined), undefined);
  assert.equal(errorClassOf(42), undefined);
});
