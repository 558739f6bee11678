/**
 * A fixed-size set of refill-unit numbers `0 .. length-1`, one bit each, with a
 * running count. The in-memory form of "which units of a blob are in the cache".
 *
 * @example
 * ```ts
 * const b = new UnitBitmap(10);
 * b.set(2, 3); // units 2, 3, 4
 * b.has(3); // true
 * [...b.runs()]; // [[2, 3]]
 * ```
 */
export class UnitBitmap {
  readonly length: number;
  #bits: Uint8Array;
  #count = 0;

  constructor(length: number) {
    if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`Bad unit count ${length}`);
    this.length = length;
    this.#bits = new Uint8Array(Math.ceil(length / 8));
  }

  /** Number of units in the set. */
  get count(): number {
    return this.#count;
  }

  has(unit: number): boolean {
    if (unit < 0 || unit >= this.length) return false;
    return ((this.#bits[unit >>> 3] as number) & (1 << (unit & 7))) !== 0;
  }

  /** Adds units `first .. first+count-1`; returns how many were not in the set before. */
  set(first: number, count: number): number {
    this.#check(first, count);
    let added = 0;
    for (let u = first; u < first + count; u++) {
      const i = u >>> 3;
      const m = 1 << (u & 7);
      const v = this.#bits[i] as number;
      if ((v & m) === 0) {
        this.#bits[i] = v | m;
        added++;
      }
    }
    this.#count += added;
    return added;
  }

  /** Removes units `first .. first+count-1`; returns how many were in the set before. */
  clear(first: number, count: number): number {
    this.#check(first, count);
    let removed = 0;
    for (let u = first; u < first + count; u++) {
      const i = u >>> 3;
      const m = 1 << (u & 7);
      const v = this.#bits[i] as number;
      if ((v & m) !== 0) {
        this.#bits[i] = v & ~m;
        removed++;
      }
    }
    this.#count -= removed;
    return removed;
  }

  /** True when every unit of `first .. first+count-1` is in the set. */
  hasAll(first: number, count: number): boolean {
    for (let u = first; u < first + count; u++) if (!this.has(u)) return false;
    return true;
  }

  /** Maximal runs of set units in increasing order, as `[first, count]`. */
  *runs(): Generator<[first: number, count: number]> {
    let u = 0;
    while (u < this.length) {
      if ((this.#bits[u >>> 3] as number) === 0 && (u & 7) === 0) {
        u += 8;
        continue;
      }
      if (!this.has(u)) {
        u++;
        continue;
      }
      const first = u;
      while (u < this.length && this.has(u)) u++;
      yield [first, u - first];
    }
  }

  /** A copy of this set. */
  clone(): UnitBitmap {
    const c = new UnitBitmap(this.length);
    c.#bits.set(this.#bits);
    c.#count = this.#count;
    return c;
  }

  #check(first: number, count: number): void {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(count) || first < 0 || count < 0 || first + count > this.length) {
      throw new RangeError(`Units [${first}, +${count}) outside 0..${this.length}`);
    }
  }
}
