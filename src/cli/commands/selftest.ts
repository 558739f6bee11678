/**
 * The main job on an embedded default: build two overlaybd layers from generated data,
 * commit them as upstream would (`overlaybd-commit -z -t`), stack them through a
 * `config.v1.json`, export the merged disk, flatten the stack, and check every byte
 * against an in-memory model of what was written.
 */
import { mkdtemp, rm, writeFile, open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { Command } from '../command.ts';
import { parse, flag } from '../args.ts';
import { createWritableLayer } from '../../formats/lsmt/writable-layer.ts';
import { commitFile } from '../../formats/lsmt/commit-files.ts';
import { inspectBlob } from '../../formats/inspect-blob.ts';
import { readDeviceConfig } from '../../image/device-config.ts';
import { openDevice } from '../../device/open-device.ts';
import { exportRaw } from '../../device/export-raw.ts';
import { mergeStackToFile } from '../../device/merge-stack.ts';
import { FailedPreconditionError } from '../../io/errors.ts';

const MiB = 1 << 20;
/** The part of the 1 GiB disk the sample writes to; the model covers it. */
const MODEL_SIZE = 96 * MiB;

/** Deterministic sample content: text-like, binary-like and runs, so compression is realistic. */
function sample(length: number, seed: number): Uint8Array {
  const words = ['overlay', 'block', 'layer', 'lazy', 'pull', 'registry', 'extent', 'index', 'zfile', 'container', 'ext4', '\n'];
  const out = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  const rnd = (): number => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>>= 0);
  };
  let i = 0;
  while (i < length) {
    const mode = rnd() % 8;
    const run = 512 + (rnd() % 8192);
    for (let j = 0; j < run && i < length; j++, i++) {
      if (mode < 5) {
        const w = words[rnd() % words.length] as string;
        out[i] = w.charCodeAt(j % w.length);
      } else if (mode < 7) out[i] = rnd() & 0xff;
      else out[i] = 0;
    }
  }
  return out;
}

interface Op {
  kind: 'write' | 'trim';
  offset: number;
  length: number;
  seed: number;
}

const LAYER1: Op[] = [
  { kind: 'write', offset: 0, length: 4 * MiB, seed: 1 },
  { kind: 'write', offset: 16 * MiB, length: 6 * MiB, seed: 2 },
  { kind: 'write', offset: 64 * MiB, length: 2 * MiB, seed: 3 },
  { kind: 'trim', offset: 17 * MiB, length: MiB, seed: 0 },
];
const LAYER2: Op[] = [
  { kind: 'write', offset: 2 * MiB, length: MiB, seed: 4 },
  { kind: 'trim', offset: 64 * MiB + 512 * 1024, length: 512 * 1024, seed: 0 },
  { kind: 'write', offset: 80 * MiB, length: 3 * MiB, seed: 5 },
];

function apply(model: Uint8Array, ops: Op[]): void {
  for (const op of ops) {
    if (op.kind === 'write') model.set(sample(op.length, op.seed), op.offset);
    else model.fill(0, op.offset, op.offset + op.length);
  }
}

async function buildLayer(name: string, ops: Op[], parentUuid?: string): Promise<void> {
  const data = `${name}.data`;
  const index = `${name}.index`;
  const layer = await createWritableLayer({ data, index, virtualSize: 1 << 30, ...(parentUuid ? { parentUuid } : {}) });
  try {
    for (const op of ops) {
      if (op.kind === 'write') await layer.write(sample(op.length, op.seed), op.offset);
      else await layer.trim(op.offset, op.length);
    }
    await layer.flush();
  } finally {
    await layer.close();
  }
}

async function hashFile(path: string, length: number): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const h = createHash('sha256');
    const buf = new Uint8Array(4 * MiB);
    for (let at = 0; at < length; at += buf.length) {
      const n = Math.min(buf.length, length - at);
      const { bytesRead } = await fh.read(buf, 0, n, at);
      if (bytesRead !== n) throw new FailedPreconditionError(`Cannot hash ${path}: short read at ${at}`);
      h.update(buf.subarray(0, n));
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

const usage = 'obd selftest [--keep]';

export const selftestCommand: Command = {
  name: 'selftest',
  summary: 'format round trip without the kernel: build, commit, stack, export, flatten, verify',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { keep: { type: 'boolean' } }, usage, min: 0, max: 0 });
    const dir = await mkdtemp(join(tmpdir(), 'obd-demo-'));
    const t0 = performance.now();
    const step = (text: string): void => io.out(`[${((performance.now() - t0) / 1000).toFixed(2)}s] ${text}\n`);
    try {
      const model = new Uint8Array(MODEL_SIZE);
      apply(model, LAYER1);
      const u1 = '00000000-0000-4000-8000-00000000d001';
      const u2 = '00000000-0000-4000-8000-00000000d002';
      await buildLayer(join(dir, 'layer1'), LAYER1);
      const l1 = join(dir, 'layer1.tar');
      await commitFile({ data: join(dir, 'layer1.data'), index: join(dir, 'layer1.index') }, l1, {
        zfile: { algorithm: 'lz4', blockSize: 4096, verify: true, rewriteHeader: true },
        tar: true,
        uuid: u1,
        userTag: new TextEncoder().encode('demo layer 1'),
      });
      step(`layer 1: 12 MiB written, 1 MiB trimmed, committed as tar(ZFile lz4) → ${l1}`);

      apply(model, LAYER2);
      await buildLayer(join(dir, 'layer2'), LAYER2, u1);
      const l2 = join(dir, 'layer2.tar');
      await commitFile({ data: join(dir, 'layer2.data'), index: join(dir, 'layer2.index') }, l2, {
        zfile: { algorithm: 'zstd', blockSize: 16384, verify: true, rewriteHeader: true },
        tar: true,
        uuid: u2,
        parentUuid: u1,
      });
      step(`layer 2: 4 MiB written over layer 1, 512 KiB trimmed, committed as tar(ZFile zstd) → ${l2}`);

      for (const blob of [l1, l2]) {
        const info = await inspectBlob(blob);
        const z = info.zfile;
        step(
          `${blob}: ${info.size} bytes on disk, ${z?.originalFileSize ?? 0} bytes of LSMT, ` +
            `${info.lsmt?.index?.valid ?? 0} extents, uuid ${info.lsmt?.trailer?.uuid}, parent ${info.lsmt?.trailer?.parentUuid}`,
        );
      }

      const config = join(dir, 'config.v1.json');
      await writeFile(config, JSON.stringify({ lowers: [{ file: l1 }, { file: l2 }], resultFile: join(dir, 'result') }, null, 2));
      const raw = join(dir, 'disk.raw');
      const merged = join(dir, 'merged.zfile');
      const stack = await openDevice(await readDeviceConfig(config));
      try {
        const r = await exportRaw(stack, raw);
        step(`exported the 2-layer stack: ${r.size} byte virtual disk, ${r.dataBytes} bytes of data → ${raw}`);
        await mergeStackToFile(stack, merged, { zfile: { algorithm: 'lz4', blockSize: 4096 } });
        step(`flattened the stack into one blob → ${merged}`);
      } finally {
        await stack.close();
      }

      const want = createHash('sha256').update(model).digest('hex');
      const gotRaw = await hashFile(raw, MODEL_SIZE);
      const flatConfig = join(dir, 'flat.json');
      await writeFile(flatConfig, JSON.stringify({ lowers: [{ file: merged }] }));
      const flat = await openDevice(await readDeviceConfig(flatConfig));
      const flatRaw = join(dir, 'flat.raw');
      try {
        await exportRaw(flat, flatRaw);
      } finally {
        await flat.close();
      }
      const gotFlat = await hashFile(flatRaw, MODEL_SIZE);
      const ok = gotRaw === want && gotFlat === want;
      step(`sha256 of the first ${MODEL_SIZE / MiB} MiB: model ${want.slice(0, 16)}…, stack ${gotRaw.slice(0, 16)}…, flattened ${gotFlat.slice(0, 16)}…`);
      if (!ok) throw new FailedPreconditionError('Demo failed: the exported disk differs from what was written');
      io.out(`demo: OK — every byte read back through the stack and the flattened layer matches\n`);
      if (flag(p, 'keep')) io.out(`demo: files kept in ${dir}\n`);
    } finally {
      if (!flag(p, 'keep')) await rm(dir, { recursive: true, force: true });
    }
  },
};
