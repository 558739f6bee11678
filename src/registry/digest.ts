/**
 * Content digests (`algorithm:hex`): validation and hashing. `sha256` and `sha512` are
 * verifiable; other well-formed algorithms parse but cannot be verified.
 */
import { createHash } from 'node:crypto';
import type { Hash } from 'node:crypto';
import { InvalidArgumentError, UnsupportedError } from '../io/errors.ts';

const DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const HEX_LENGTH: Record<string, number> = { sha256: 64, sha512: 128 };

/** Whether `s` is a well-formed digest (and, for sha256/sha512, has the right hex length). */
export function isDigest(s: string): boolean {
  if (!DIGEST.test(s)) return false;
  const [algorithm, hex] = s.split(':') as [string, string];
  const len = HEX_LENGTH[algorithm];
  return len === undefined ? hex.length >= 32 : hex.length === len && /^[a-f0-9]+$/.test(hex);
}

/** Throws `InvalidArgumentError` unless `s` is a digest; returns it. */
export function checkDigest(s: string): string {
  if (!isDigest(s)) throw new InvalidArgumentError(`Cannot use digest ${JSON.stringify(s.slice(0, 80))}: not of the form sha256:<64 hex>`);
  return s;
}

/** A hash object for the algorithm of `digest` (sha256 or sha512). */
export function hasherFor(digest: string): Hash {
  const algorithm = digest.slice(0, digest.indexOf(':'));
  if (HEX_LENGTH[algorithm] === undefined) throw new UnsupportedError(`Cannot verify digest ${digest}: algorithm ${algorithm} is not supported`);
  return createHash(algorithm);
}

/** `sha256:<hex>` of `bytes` (or another supported algorithm). */
export function digestOf(bytes: Uint8Array, algorithm: 'sha256' | 'sha512' = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}
