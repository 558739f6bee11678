import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { normalizeEntryPath, ScopedRoot } from './scoped-root.ts';
import { FailedPreconditionError, InvalidArgumentError } from '../io/errors.ts';

test('normalizeEntryPath() drops . and empty components and refuses escapes', () => {
  assert.equal(normalizeEntryPath('./usr//bin/./sh', 'e'), 'usr/bin/sh');
  assert.equal(normalizeEntryPath('./', 'e'), '');
  assert.equal(normalizeEntryPath('dir/', 'e'), 'dir');
  for (const bad of ['../x', 'a/../../x', 'a/..', '/etc/passwd', 'a\0b']) {
    assert.throws(() => normalizeEntryPath(bad, `tar entry ${bad}`), (e: unknown) => e instanceof InvalidArgumentError && e.message.includes(`tar entry ${bad}`));
  }
});

test('ScopedRoot resolves parents inside the root, following symlinks as the container would', () => {
  const root = mkdtempSync(join(tmpdir(), 'obd-scoped-'));
  try {
    mkdirSync(join(root, 'usr', 'lib'), { recursive: true });
    symlinkSync('usr/lib', join(root, 'lib'));
    symlinkSync('/usr', join(root, 'abs'));
    symlinkSync('../../../../../../../tmp', join(root, 'escape'));
    symlinkSync('loop2', join(root, 'loop1'));
    symlinkSync('loop1', join(root, 'loop2'));
    writeFileSync(join(root, 'file'), 'x');
    const r = new ScopedRoot(root);
    const opts = { create: false, entry: 'tar entry E' };
    assert.equal(r.resolveDir('lib', opts), join(root, 'usr', 'lib'));
    assert.equal(r.resolveDir('abs/lib', opts), join(root, 'usr', 'lib'), 'an absolute target is taken relative to the root');
    assert.equal(r.resolveDir('missing/dir', opts), undefined);
    assert.equal(r.resolveDir('new/deep', { create: true, entry: 'e' }), join(root, 'new', 'deep'));
    assert.equal(statSync(join(root, 'new', 'deep')).mode & 0o777, 0o755);
    assert.throws(() => r.resolveDir('escape/x', opts), (e: unknown) => e instanceof InvalidArgumentError && /tar entry E: a symlink in its parent path 'escape\/x' leads out of the root/.test(e.message));
    assert.throws(() => r.resolveDir('loop1', opts), /more than 40 symlinks/);
    assert.throws(() => r.resolveDir('file/x', { create: true, entry: 'e' }), (e: unknown) => e instanceof FailedPreconditionError && /parent 'file' exists and is not a directory/.test(e.message));
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
