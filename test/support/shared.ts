/**
 * Where tests find `../shared` (specs, fixtures, vectors). Tests read it in place and
 * never copy it into the project. Override with OBD_SHARED.
 */
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import { createHash } from 'node:crypto';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const REPO_ROOT = repoRoot;
export const SHARED = process.env['OBD_SHARED'] ?? join(repoRoot, '..', 'shared');
export const VECTORS = join(SHARED, 'vectors');
export const FIXTURES = join(SHARED, 'fixtures', 'upstream');

export function vector(...parts: string[]): string {
  return join(VECTORS, ...parts);
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}
