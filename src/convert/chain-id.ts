/**
 * OCI chain IDs and the layer UUIDs upstream derives from them (image-format.md §4.2):
 * `chain[0] = diff_id[0]`, `chain[i] = sha256(chain[i-1] + " " + diff_id[i])`; the UUID
 * of layer i is the first 32 hex digits of `chain[i]` split 8-4-4-4-12. Identical layer
 * stacks therefore convert to layers with identical UUIDs, and the chain ID is the key of
 * the conversion cache.
 *
 * @example
 * ```ts
 * const chain = chainIds(['sha256:01bb4fce…']); // ['sha256:01bb4fce…']
 * layerUuid(chain[0]); // '01bb4fce-3eb1-b56b-05ad-f99504dafd31'
 * ```
 */
import { createHash } from 'node:crypto';
import { DataCorruptionError } from '../io/errors.ts';

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** Chain IDs of a layer stack given its diff_ids, bottom first. */
export function chainIds(diffIds: readonly string[]): string[] {
  const out: string[] = [];
  for (const [i, d] of diffIds.entries()) {
    if (!DIGEST.test(d)) throw new DataCorruptionError(`Cannot compute chain IDs: diff_ids[${i}] '${d}' is not a sha256 digest`);
    const prev = out[i - 1];
    out.push(prev === undefined ? d : `sha256:${createHash('sha256').update(`${prev} ${d}`).digest('hex')}`);
  }
  return out;
}

/** The layer UUID derived from a chain ID. */
export function layerUuid(chainId: string): string {
  const h = chainId.slice('sha256:'.length);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}
