/**
 * The quick start (the README's first command): build a small image from files
 * generated here, store it as overlaybd in a local OCI layout, mount it lazily through
 * FUSE + loop, read a few files, and report how much of the layer was fetched.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { Command } from '../command.ts';
import { parse, flag, str } from '../args.ts';
import { createWritableLayer } from '../../formats/lsmt/writable-layer.ts';
import { commitFile } from '../../formats/lsmt/commit-files.ts';
import { LsmtStack } from '../../formats/lsmt/stack.ts';
import { OciLayout } from '../../image/oci-layout.ts';
import { writeOverlaybdImage } from '../../image/write-image.ts';
import { openImageEndpoint } from '../../image/image-endpoint.ts';
import { imageDeviceConfig } from '../../image/image-device-config.ts';
import { RemoteAccess } from '../../image/remote-access.ts';
import { openDevice } from '../../device/open-device.ts';
import { startSession } from '../../attach/session.ts';
import { CountingReader } from '../../io/counting-reader.ts';
import { FailedPreconditionError } from '../../io/errors.ts';

const usage = 'obd demo [--keep] [--dir DIR]';

/** Deterministic file content: text-like with some binary runs. */
function content(seed: number, size: number): Buffer {
  const words = ['block', 'layer', 'lazy', 'overlay', 'registry', 'extent', 'zfile', 'container', 'start', 'fast'];
  const out = Buffer.alloc(size);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < size; ) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    if (x % 5 === 0) {
      for (let j = 0; j < 64 && i < size; j++, i++) out[i] = (x >>> (j % 24)) & 0xff;
    } else {
      const w = `${words[x % words.length]} `;
      for (let j = 0; j < w.length && i < size; j++, i++) out[i] = w.charCodeAt(j);
    }
  }
  return out;
}

interface SampleFile {
  path: string;
  size: number;
  seed: number;
}

function sampleTree(): SampleFile[] {
  const files: SampleFile[] = [];
  for (let d = 0; d < 8; d++) {
    for (let f = 0; f < 40; f++) files.push({ path: `usr/lib/pkg${d}/file${f}.dat`, size: 4096 + ((d * 40 + f) * 7919) % 120_000, seed: d * 100 + f });
  }
  files.push({ path: 'usr/share/big/archive.bin', size: 12 << 20, seed: 999 });
  files.push({ path: 'etc/motd', size: 200, seed: 7 });
  return files;
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export const demoCommand: Command = {
  name: 'demo',
  summary: 'quick start: build a sample image, store it as overlaybd, mount it lazily, read, report',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { keep: { type: 'boolean' }, dir: { type: 'string' } }, usage, min: 0, max: 0 });
    if (process.getuid?.() !== 0) throw new FailedPreconditionError('The demo mounts file systems: run it as root');
    const given = str(p, 'dir');
    const dir = given ?? (await mkdtemp(join(tmpdir(), 'obd-quickstart-')));
    await mkdir(dir, { recursive: true });
    const runDir = join(dir, 'run');
    const t0 = performance.now();
    const say = (t: string): void => io.out(`[${((performance.now() - t0) / 1000).toFixed(1)}s] ${t}\n`);
    try {
      // 1. Build: a fresh writable layer, ext4 on it, the sample files written through the kernel.
      const files = sampleTree();
      const data = join(dir, 'build', 'writable_data');
      const index = join(dir, 'build', 'writable_index');
      await mkdir(join(dir, 'build'), { recursive: true });
      const upper = await createWritableLayer({ data, index, virtualSize: 1 << 30 });
      const buildDevice = await LsmtStack.create({ lowers: [], upper });
      const buildMnt = join(dir, 'build', 'rootfs');
      await mkdir(buildMnt, { recursive: true });
      const build = await startSession(buildDevice, { target: 'build', runDir, mountpoint: buildMnt, writable: true, mkfs: true });
      let total = 0;
      try {
        for (const f of files) {
          await mkdir(join(buildMnt, f.path, '..'), { recursive: true });
          await writeFile(join(buildMnt, f.path), content(f.seed, f.size));
          total += f.size;
        }
      } finally {
        await build.stop();
        await buildDevice.close();
      }
      say(`built an ext4 image with ${files.length} generated files (${(total / 2 ** 20).toFixed(1)} MiB) on a 1 GiB overlaybd writable layer`);

      // 2. Commit as upstream's `overlaybd-commit -z -t` and store as an OCI image.
      const layerFile = join(dir, 'build', 'overlaybd.commit');
      await commitFile({ data, index }, layerFile, { zfile: { algorithm: 'lz4', blockSize: 4096, verify: true, rewriteHeader: true }, tar: true, overwrite: true });
      const layoutDir = join(dir, 'image');
      const layout = await OciLayout.openOrCreate(layoutDir);
      const desc = await writeOverlaybdImage(layout, { layers: [layerFile], tag: 'sample', config: { Cmd: ['/bin/sh'] } });
      const ref = `oci:${layoutDir}:sample`;
      say(`stored as an overlaybd image: ${ref} (${desc.digest.slice(0, 19)}…)`);

      // 3. Mount lazily and read a few files.
      const access = new RemoteAccess();
      const cfg = await imageDeviceConfig(await openImageEndpoint(ref, { access }));
      const counters: CountingReader[] = [];
      const device = await openDevice(cfg, {
        wrapBlob: (r) => {
          const c = new CountingReader(r);
          counters.push(c);
          return c;
        },
      });
      const mnt = join(dir, 'mnt');
      await mkdir(mnt, { recursive: true });
      const blobSize = counters.reduce((a, c) => a + c.size, 0);
      const atOpen = counters.reduce((a, c) => a + c.bytesRead, 0);
      const session = await startSession(device, { target: ref, runDir, mountpoint: mnt });
      say(`mounted ${ref} on ${mnt} through ${session.record.blockDevice} (FUSE + loop); opening read ${(atOpen / 1024).toFixed(0)} KiB of indexes`);
      try {
        const picks = [files[files.length - 1] as SampleFile, files[3] as SampleFile, files[150] as SampleFile];
        for (const f of picks) {
          const got = await readFile(join(mnt, f.path));
          if (sha(got) !== sha(content(f.seed, f.size))) throw new FailedPreconditionError(`Demo failed: /${f.path} differs from what was written`);
          say(`read /${f.path} (${got.length} bytes): content verified`);
        }
      } finally {
        await session.stop();
        await device.close();
        await access.close();
      }
      const fetched = counters.reduce((a, c) => a + c.bytesRead, 0);
      say(`fetched ${(fetched / 2 ** 20).toFixed(2)} MiB of the ${(blobSize / 2 ** 20).toFixed(2)} MiB layer blob (${((100 * fetched) / blobSize).toFixed(1)}%) to read 3 of ${files.length} files`);
      io.out('demo: OK\n');
      if (flag(p, 'keep') || given !== undefined) io.out(`demo: files kept in ${dir}\n`);
    } finally {
      if (!flag(p, 'keep') && given === undefined) await rm(dir, { recursive: true, force: true });
    }
  },
};
