/**
 * A serving child for supervisor tests: `runFuseServerChild` over a read-only
 * MemoryBlockDevice whose bytes follow {@link patternByte}. The supervisor's `open`
 * message is a {@link MemoryChildSpec}: it can log every device call to a file, delay
 * reads, refuse to open, or kill the process when a read reaches a given offset.
 *
 * `node --import tsx test/support/memory-fuse-child.ts [--parked N]` (started by superviseFuse).
 */
import { appendFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { runFuseServerChild } from '../../src/attach/serve-fuse-child.ts';
import { NotFoundError } from '../../src/io/errors.ts';
import { MemoryBlockDevice } from './memory-block-device.ts';

export interface MemoryChildSpec {
  size: number;
  seed: number;
  /** Append `pid op offset length` per device call. */
  log?: string;
  readDelayMs?: number;
  /** Fail `open` with NotFoundError and this message. */
  failOpen?: string;
  /** SIGKILL this process when a read starts at this offset. */
  crashOnRead?: number;
}

/** Byte `i` of the device of `seed`. */
export function patternByte(i: number, seed: number): number {
  return (i * 131 + seed + Math.floor(i / 4096)) & 0xff;
}

if (process.send !== undefined) {
  // `--parked N`: reader threads started while waiting (as obd serve-fuse does).
  const parked = process.argv.indexOf('--parked');
  process.exitCode = await runFuseServerChild({
    ...(parked >= 0 ? { parkedReaders: Number(process.argv[parked + 1]) } : {}),
    async open(raw) {
      const spec = raw as MemoryChildSpec;
      if (spec.failOpen !== undefined) throw new NotFoundError(spec.failOpen);
      const bytes = new Uint8Array(spec.size);
      for (let i = 0; i < bytes.length; i++) bytes[i] = patternByte(i, spec.seed);
      const dev = new MemoryBlockDevice(bytes, { readOnly: true });
      dev.hook = async (op, offset, length) => {
        if (spec.log !== undefined) appendFileSync(spec.log, `${process.pid} ${op} ${offset} ${length}\n`);
        if (op === 'read' && spec.crashOnRead === offset) process.kill(process.pid, 'SIGKILL');
        if (op === 'read' && spec.readDelayMs !== undefined) await sleep(spec.readDelayMs);
      };
      return dev;
    },
  });
}
