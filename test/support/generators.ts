/**
 * The data generators of ../shared/vectors/README.md §1, used to rebuild the inputs
 * of every vector.
 */

/** PAT(n, s): byte j = (s + j) mod 251. */
export function pat(n: number, s: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let j = 0; j < n; j++) out[j] = (s + j) % 251;
  return out;
}

/** XS(n, seed): xorshift32 (13/17/5), each new state emitted as 4 LE bytes. */
export function xs(n: number, seed: number): Uint8Array {
  if (n % 4 !== 0) throw new RangeError('XS length must be a multiple of 4');
  const out = new Uint8Array(n);
  const view = new DataView(out.buffer);
  let x = seed >>> 0;
  for (let i = 0; i < n; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    view.setUint32(i, x, true);
  }
  return out;
}

/** FILL(n, v). */
export function fill(n: number, v: number): Uint8Array {
  return new Uint8Array(n).fill(v);
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** ZF1 = PAT(524288,0) ‖ FILL(262144,0) ‖ XS(262144,0x2545F491). */
export function zf1(): Uint8Array {
  return concat(pat(524288, 0), fill(262144, 0), xs(262144, 0x2545f491));
}

/** ZFODD = PAT(200000,0) ‖ XS(100000,0x2545F491) ‖ FILL(1,0x7F). */
export function zfOdd(): Uint8Array {
  return concat(pat(200000, 0), xs(100000, 0x2545f491), fill(1, 0x7f));
}

/** ZF768 = first 786432 bytes of ZF1. */
export function zf768(): Uint8Array {
  return zf1().subarray(0, 786432);
}
