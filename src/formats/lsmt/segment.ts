/**
 * The 16-byte LSMT index entry ("segment mapping", lsmt.md §5).
 *
 * | word | bits   | field   |
 * |------|--------|---------|
 * | w0   | 0..49  | offset  (logical sector)            |
 * | w0   | 50..63 | length  (sectors, 0..16383)         |
 * | w1   | 0..54  | moffset (sector in the data file)   |
 * | w1   | 55     | zeroed                              |
 * | w1   | 56..63 | tag     (file selector)             |
 *
 * Decoded through 32-bit halves so that no value passes through a lossy shift.
 */
export const SEGMENT_SIZE = 16;
export const SECTOR = 512;
/** Largest `length` of one entry. */
export const MAX_SEGMENT_LENGTH = 16383;
/** `offset` of a padding (invalid) entry. */
export const INVALID_OFFSET = 2 ** 50 - 1;
const OFFSET_HI_MASK = 0x3ffff; // 18 bits above the low 32 of the 50-bit offset
const MOFFSET_HI_MASK = 0x7fffff; // 23 bits above the low 32 of the 55-bit moffset
const TWO32 = 2 ** 32;

export interface Segment {
  /** First logical sector. */
  offset: number;
  /** Number of sectors. */
  length: number;
  /** First sector inside the data file selected by `tag`. */
  moffset: number;
  /** The range reads as zeros; no data is stored. */
  zeroed: boolean;
  /** File selector (layer number in a stack). */
  tag: number;
}

/** Decodes the entry at byte `pos` of `view`. */
export function decodeSegment(view: DataView, pos: number): Segment {
  const lo0 = view.getUint32(pos, true);
  const hi0 = view.getUint32(pos + 4, true);
  const lo1 = view.getUint32(pos + 8, true);
  const hi1 = view.getUint32(pos + 12, true);
  return {
    offset: lo0 + (hi0 & OFFSET_HI_MASK) * TWO32,
    length: hi0 >>> 18,
    moffset: lo1 + (hi1 & MOFFSET_HI_MASK) * TWO32,
    zeroed: ((hi1 >>> 23) & 1) === 1,
    tag: hi1 >>> 24,
  };
}

/** Encodes `s` at byte `pos` of `view`. */
export function encodeSegment(s: Segment, view: DataView, pos: number): void {
  if (!(s.offset >= 0 && s.offset <= INVALID_OFFSET && s.length >= 0 && s.length <= MAX_SEGMENT_LENGTH)) {
    throw new RangeError(`Cannot encode segment: offset ${s.offset} or length ${s.length} out of range`);
  }
  if (!(s.moffset >= 0 && s.moffset <= Number.MAX_SAFE_INTEGER && s.tag >= 0 && s.tag <= 255)) {
    throw new RangeError(`Cannot encode segment: moffset ${s.moffset} or tag ${s.tag} out of range`);
  }
  view.setUint32(pos, s.offset % TWO32, true);
  view.setUint32(pos + 4, ((Math.floor(s.offset / TWO32) & OFFSET_HI_MASK) | (s.length << 18)) >>> 0, true);
  view.setUint32(pos + 8, s.moffset % TWO32, true);
  view.setUint32(
    pos + 12,
    ((Math.floor(s.moffset / TWO32) & MOFFSET_HI_MASK) | ((s.zeroed ? 1 : 0) << 23) | (s.tag << 24)) >>> 0,
    true,
  );
}

/** The padding entry: offset 2^50−1, everything else 0. */
export const INVALID_SEGMENT: Readonly<Segment> = Object.freeze({
  offset: INVALID_OFFSET,
  length: 0,
  moffset: 0,
  zeroed: false,
  tag: 0,
});

/** Encodes `segments` (plus `padTo` − n padding entries) into a new byte array. */
export function encodeSegments(segments: readonly Segment[], padTo = segments.length): Uint8Array {
  const count = Math.max(padTo, segments.length);
  const bytes = new Uint8Array(count * SEGMENT_SIZE);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < count; i++) encodeSegment(segments[i] ?? INVALID_SEGMENT, view, i * SEGMENT_SIZE);
  return bytes;
}

/** Decodes every entry of `bytes` (a multiple of 16 bytes), keeping padding entries. */
export function decodeSegments(bytes: Uint8Array): Segment[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Segment[] = [];
  for (let pos = 0; pos + SEGMENT_SIZE <= bytes.length; pos += SEGMENT_SIZE) out.push(decodeSegment(view, pos));
  return out;
}

/** End sector (exclusive) of `s`. */
export function segmentEnd(s: Segment): number {
  return s.offset + s.length;
}
