/**
 * `obd export`: the merged virtual disk of a device as a sparse raw file. Only mapped,
 * non-zero data is written (read through the device, 4 MiB at a time); the file is
 * then extended to the device size, so a 64 GiB image with 70 MB of data costs 70 MB.
 */
import { open, rm } from 'node:fs/promises';
import type { BlockDevice } from '../io/block-device.ts';
import { AlreadyExistsError } from '../io/errors.ts';
import { native } from '../native/index.ts';
import type { Segment } from '../formats/lsmt/segment.ts';

const CHUNK = 4 << 20;
const SECTOR = 512;

export interface ExportResult {
  size: number;
  /** Bytes of non-zero data written. */
  dataBytes: number;
}

/** Merges adjacent data segments into byte ranges. */
function dataRanges(segments: readonly Segment[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const s of segments) {
    if (s.zeroed || s.length === 0) continue;
    const start = s.offset * SECTOR;
    const end = (s.offset + s.length) * SECTOR;
    const last = out[out.length - 1];
    if (last !== undefined && last[1] === start) last[1] = end;
    else out.push([start, end]);
  }
  return out;
}

export async function exportRaw(
  device: BlockDevice & { segments(): Segment[] },
  path: string,
  options: { overwrite?: boolean } = {},
): Promise<ExportResult> {
  if (options.overwrite === true) await rm(path, { force: true });
  const fh = await open(path, 'wx', 0o644).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'EEXIST') throw new AlreadyExistsError(`Cannot export to ${path}: file exists (use -f to overwrite)`, { cause: e });
    throw e;
  });
  let dataBytes = 0;
  try {
    const buf = new Uint8Array(CHUNK);
    for (const [start, end] of dataRanges(device.segments())) {
      for (let at = start; at < Math.min(end, device.size); at += CHUNK) {
        const n = Math.min(CHUNK, end - at, device.size - at);
        const piece = buf.subarray(0, n);
        await device.readAt(piece, at);
        if (native.isAllZero(piece)) continue;
        let done = 0;
        while (done < n) done += (await fh.write(piece, done, n - done, at + done)).bytesWritten;
        dataBytes += n;
      }
    }
    await fh.truncate(device.size);
    await fh.close();
  } catch (e) {
    await fh.close().catch(() => {});
    await rm(path, { force: true });
    throw e;
  }
  return { size: device.size, dataBytes };
}
