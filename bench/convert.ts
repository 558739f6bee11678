/**
 * bench/convert: `convertImage` of a one-layer image (an uncompressed tar of host
 * directories, default /usr/share/doc and /usr/lib/python3.11: many small files) against
 * the baseline of the same tar extracted with `tar -x` onto a fresh ext4 on a plain loop
 * device (mkfs with the same options, extract, umount), in one run. The conversion is
 * timed whole (mkfs through FUSE + loop, apply in a child process, umount, commit to a
 * tar-wrapped lz4 ZFile, store in a local OCI layout) and per phase.
 *
 * `node --import tsx bench/convert.ts [--paths usr/share/doc,usr/lib/python3.11] [--rounds n]`
 * Needs root. Prints a table and `RESULT convert/total-ratio`, `RESULT convert/apply-ratio`.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { OciLayout } from '../src/image/oci-layout.ts';
import { MEDIA_TYPES } from '../src/image/descriptor.ts';
import { openImageEndpoint } from '../src/image/image-endpoint.ts';
import { RemoteAccess } from '../src/image/remote-access.ts';
import { convertImage, type ConvertEvent } from '../src/convert/convert-image.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const PATHS = (arg('paths') ?? 'usr/share/doc,usr/lib/python3.11').split(',');
const ROUNDS = Number(arg('rounds') ?? 2);
const MKFS = ['-O', '^has_journal,sparse_super,flex_bg', '-G', '1', '-E', 'discard', '-F'];

function exec(argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { maxBuffer: 64 << 20, timeout: 1_800_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')}: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

const dir = mkdtempSync(join(tmpdir(), 'obd-bench-convert-'));
try {
  const tar = join(dir, 'layer.tar');
  await exec(['tar', '--xattrs', '--xattrs-include=*', '-cf', tar, '-C', '/', ...PATHS]);
  const tarSize = statSync(tar).size;
  const files = Number((await exec(['sh', '-c', `tar -tf ${tar} | wc -l`])).trim());
  console.log(`source: ${PATHS.join(', ')}: ${(tarSize / 2 ** 20).toFixed(1)} MiB tar, ${files} entries`);

  // The image: the tar as its only (uncompressed) layer.
  const layoutDir = join(dir, 'src');
  const layout = await OciLayout.openOrCreate(layoutDir);
  const diffId = await sha256File(tar);
  await layout.importBlobFile(tar, diffId);
  const config = new TextEncoder().encode(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: [diffId] } }));
  const configDigest = await layout.writeBlob(config);
  const manifest = new TextEncoder().encode(
    JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest, config: { mediaType: MEDIA_TYPES.ociConfig, digest: configDigest, size: config.length }, layers: [{ mediaType: MEDIA_TYPES.ociLayerTar, digest: diffId, size: tarSize }] }),
  );
  const digest = await layout.writeBlob(manifest);
  await layout.tag({ mediaType: MEDIA_TYPES.ociManifest, digest, size: manifest.length }, 'bench');

  const rows: Array<{ round: number; baseline: number; baseExtract: number; total: number; apply: number; commit: number; blob: number }> = [];
  for (let round = 1; round <= ROUNDS; round++) {
    await exec(['sync']);
    // Baseline: mkfs + tar -x + umount on a plain loop device over a sparse 64 GiB file.
    const img = join(dir, 'base.img');
    const mnt = join(dir, 'base-mnt');
    mkdirSync(mnt, { recursive: true });
    const t0 = performance.now();
    await exec(['truncate', '-s', '64G', img]);
    const loop = (await exec(['losetup', '-f', '--show', img])).trim();
    let baseExtract = 0;
    try {
      await exec(['mkfs.ext4', '-q', ...MKFS, loop]);
      await exec(['mount', '-o', 'discard', loop, mnt]);
      const tx = performance.now();
      try {
        await exec(['tar', '-x', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-p', '-C', mnt, '-f', tar]);
      } finally {
        await exec(['umount', mnt]);
      }
      baseExtract = performance.now() - tx;
    } finally {
      await exec(['losetup', '-d', loop]);
    }
    const baseline = performance.now() - t0;
    rmSync(img);

    // Ours.
    const access = new RemoteAccess();
    const phases = new Map<string, number>();
    const started = new Map<string, number>();
    const onEvent = (e: ConvertEvent): void => {
      if (e.type !== 'layer') return;
      if (!started.has(e.phase)) started.set(e.phase, performance.now());
      if (e.done) phases.set(e.phase, performance.now() - (started.get(e.phase) as number));
    };
    const out = join(dir, `out-${round}`);
    const t1 = performance.now();
    const src = await openImageEndpoint(`oci:${layoutDir}:bench`, { access });
    const dst = await openImageEndpoint(`oci:${out}:bench`, { access, create: true });
    const r = await convertImage(src, dst, { workDir: join(dir, 'work'), onEvent });
    const total = performance.now() - t1;
    await access.close();
    const m = JSON.parse(await import('node:fs').then((fs) => fs.readFileSync(join(out, 'blobs', 'sha256', r.descriptor.digest.slice(7)), 'utf8'))) as { layers: Array<{ size: number }> };
    rows.push({ round, baseline, baseExtract, total, apply: phases.get('apply') ?? 0, commit: phases.get('commit') ?? 0, blob: m.layers[0]?.size ?? 0 });
    rmSync(out, { recursive: true, force: true });
  }
  const s = (ms: number): string => (ms / 1000).toFixed(2).padStart(7);
  console.log('round  baseline(s) [tar -x]   convert(s) [apply] [commit]   blob MiB');
  for (const r of rows) console.log(`${String(r.round).padStart(5)}  ${s(r.baseline)} [${s(r.baseExtract)}]   ${s(r.total)} [${s(r.apply)}] [${s(r.commit)}]   ${(r.blob / 2 ** 20).toFixed(1)}`);
  const best = <K extends keyof (typeof rows)[number]>(k: K): number => Math.min(...rows.map((r) => r[k]));
  console.log(`RESULT convert/total-ratio ${(best('total') / best('baseline')).toFixed(2)}`);
  console.log(`RESULT convert/apply-ratio ${(best('apply') / best('baseExtract')).toFixed(2)}`);
  console.log(`RESULT convert/throughput-MBps ${(tarSize / 2 ** 20 / (best('total') / 1000)).toFixed(1)}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
