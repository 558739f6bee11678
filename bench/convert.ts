/**
 * bench/convert: `convertImage` of a Debian image against a plain `tar -x` of the same
 * layers onto a fresh ext4 loop mount, in one run.
 *
 * The image: a Debian bookworm rootfs by `debootstrap --variant=minbase
 * --include=PACKAGES` (default python3,python3-pip,python3-numpy: ≥ 150 MB), cached under
 * /var/tmp/obd-bench-cache/rootfs-<key> keyed by its debootstrap arguments (the same
 * cache and key as bench/cold-start), split by path into three layers as a Dockerfile
 * would stack them (base system, /usr/share, the Python stack), stored gzip-compressed
 * (or plain with `--compression none`) in a local OCI layout.
 *
 * Baseline: `mkfs.ext4` with upstream's options on a plain loop device over a sparse
 * 64 GiB file, mount, `tar -x` of each layer in order, umount. Ours: `convertImage` into
 * a local OCI layout (per layer: writable layer, mkfs on the bottom one, FUSE + loop +
 * mount, apply in a child process, umount, commit to a tar-wrapped lz4 ZFile, store).
 * A profile round then runs the same steps one by one for each layer and prints the time
 * of each phase (create, attach+mkfs, apply, umount+detach, flush, commit, store).
 *
 * `node --import tsx bench/convert.ts [--packages a,b] [--compression gzip|none] [--rounds n]`
 * Needs root, debootstrap (first run: the Debian mirror), /dev/fuse, losetup.
 * Prints tables and `RESULT convert/total-ratio <ours/baseline>` (target ≤ 2),
 * `RESULT convert/apply-ratio`, `RESULT convert/throughput-MBps`.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { OciLayout } from '../src/image/oci-layout.ts';
import { MEDIA_TYPES, type Descriptor } from '../src/image/descriptor.ts';
import { openImageEndpoint } from '../src/image/image-endpoint.ts';
import { RemoteAccess } from '../src/image/remote-access.ts';
import { convertImage, type ConvertEvent } from '../src/convert/convert-image.ts';
import { createWritableLayer } from '../src/formats/lsmt/writable-layer.ts';
import { commitFile } from '../src/formats/lsmt/commit-files.ts';
import { openDevice } from '../src/device/open-device.ts';
import { startSession } from '../src/attach/session.ts';
import { SubprocessApplier } from '../src/convert/subprocess-applier.ts';
import type { DeviceConfig } from '../src/image/device-config.ts';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const ROUNDS = Number(arg('rounds') ?? 2);
const COMPRESSION = (arg('compression') ?? 'gzip') as 'gzip' | 'none';
const CACHE_DIR = process.env['OBD_BENCH_CACHE'] ?? '/var/tmp/obd-bench-cache';
const ROOTFS = {
  suite: 'bookworm',
  variant: 'minbase',
  packages: (arg('packages') ?? 'python3,python3-pip,python3-numpy').split(','),
  mirror: 'http://deb.debian.org/debian',
};
const PYTHON_PATHS = ['./usr/lib/python3', './usr/lib/python3.11', './usr/share/python3'];
const LAYERS: Array<{ paths: string[]; exclude?: string[] }> = [
  { paths: ['.'], exclude: ['./dev/*', './proc/*', './sys/*', './run/*', './tmp/*', './usr/share/*', ...PYTHON_PATHS] },
  { paths: ['./usr/share'], exclude: PYTHON_PATHS },
  { paths: PYTHON_PATHS },
];
const MKFS = ['-O', '^has_journal,sparse_super,flex_bg', '-G', '1', '-E', 'discard', '-F'];
const MIN_BYTES = 150e6;

function exec(argv: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { maxBuffer: 64 << 20, timeout: 1_800_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')}: ${err.message} ${stderr.slice(-4000)}`));
      else resolve(stdout);
    });
  });
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return `sha256:${h.digest('hex')}`;
}

function treeBytes(dir: string): number {
  let n = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) n += treeBytes(p);
    else if (e.isFile()) n += statSync(p).size;
  }
  return n;
}

function unmountUnder(dir: string): void {
  for (const mp of readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '').reverse()) {
    if (mp.startsWith(`${dir}/`)) void exec(['umount', '-l', mp]).catch(() => undefined);
  }
}

/** The debootstrap rootfs, cached by its arguments (bench/support/bench-image.ts's key). */
async function rootfs(): Promise<string> {
  const key = createHash('sha256').update(JSON.stringify(ROOTFS)).digest('hex').slice(0, 16);
  const dir = join(CACHE_DIR, `rootfs-${key}`);
  if (!existsSync(dir)) {
    const tmp = `${dir}.tmp`;
    unmountUnder(tmp);
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    console.log(`# debootstrap --variant=${ROOTFS.variant} --include=${ROOTFS.packages.join(',')} ${ROOTFS.suite} ${tmp}/rootfs ${ROOTFS.mirror}`);
    try {
      await exec(['debootstrap', `--variant=${ROOTFS.variant}`, `--include=${ROOTFS.packages.join(',')}`, ROOTFS.suite, join(tmp, 'rootfs'), ROOTFS.mirror]);
      await exec(['sh', '-c', `rm -rf "${tmp}"/rootfs/var/lib/apt/lists/* "${tmp}"/rootfs/var/cache/apt/*`]);
    } finally {
      unmountUnder(tmp);
    }
    await rename(tmp, dir);
  }
  return join(dir, 'rootfs');
}

/** Writes the layer tars (plain, for the baseline and the image) and the OCI image. */
async function buildImage(root: string, dir: string): Promise<{ layout: string; tars: string[] }> {
  const layout = await OciLayout.openOrCreate(join(dir, 'src'));
  const tars: string[] = [];
  const descs: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const [i, l] of LAYERS.entries()) {
    const tar = join(dir, `layer-${i}.tar`);
    const parents = new Set<string>();
    for (const p of l.paths) {
      const parts = p.split('/');
      for (let j = 2; j < parts.length; j++) parents.add(parts.slice(0, j).join('/'));
    }
    parents.delete('.');
    await exec(['tar', '--create', '--file', tar, '--numeric-owner', '--xattrs', '--xattrs-include=*', '--sort=name', '--directory', root, ...(l.exclude ?? []).map((x) => `--exclude=${x}`), '--no-recursion', ...[...parents].sort(), '--recursion', ...l.paths]);
    diffIds.push(await sha256File(tar));
    let blob = tar;
    if (COMPRESSION === 'gzip') {
      await exec(['sh', '-c', `gzip -6 -n -c "${tar}" > "${tar}.gz"`]);
      blob = `${tar}.gz`;
    }
    const digest = await sha256File(blob);
    await layout.importBlobFile(blob, digest);
    descs.push({ mediaType: COMPRESSION === 'gzip' ? MEDIA_TYPES.ociLayerGzip : MEDIA_TYPES.ociLayerTar, digest, size: statSync(blob).size });
    tars.push(blob);
  }
  const config = new TextEncoder().encode(JSON.stringify({ architecture: 'amd64', os: 'linux', config: {}, rootfs: { type: 'layers', diff_ids: diffIds } }));
  const configDigest = await layout.writeBlob(config);
  const manifest = new TextEncoder().encode(
    JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociManifest, config: { mediaType: MEDIA_TYPES.ociConfig, digest: configDigest, size: config.length }, layers: descs }),
  );
  const digest = await layout.writeBlob(manifest);
  await layout.tag({ mediaType: MEDIA_TYPES.ociManifest, digest, size: manifest.length }, 'bench');
  return { layout: join(dir, 'src'), tars };
}

/** mkfs + mount + tar -x of every layer + umount on a plain loop device. */
async function baseline(dir: string, tars: string[]): Promise<{ total: number; extract: number }> {
  await exec(['sync']);
  const img = join(dir, 'base.img');
  const mnt = join(dir, 'base-mnt');
  mkdirSync(mnt, { recursive: true });
  const t0 = performance.now();
  await exec(['truncate', '-s', '64G', img]);
  const loop = (await exec(['losetup', '-f', '--show', img])).trim();
  let extract = 0;
  try {
    await exec(['mkfs.ext4', '-q', ...MKFS, loop]);
    await exec(['mount', '-o', 'discard', loop, mnt]);
    const tx = performance.now();
    try {
      for (const tar of tars) await exec(['tar', '-x', '--xattrs', '--xattrs-include=*', '--numeric-owner', '-p', '-C', mnt, '-f', tar]);
    } finally {
      await exec(['umount', mnt]);
    }
    extract = performance.now() - tx;
  } finally {
    await exec(['losetup', '-d', loop]);
  }
  const total = performance.now() - t0;
  rmSync(img);
  return { total, extract };
}

/** The whole conversion; apply time summed over the layers from the events. */
async function ours(dir: string, layout: string, round: number): Promise<{ total: number; apply: number; commit: number; blobBytes: number }> {
  await exec(['sync']);
  const access = new RemoteAccess();
  const started = new Map<string, number>();
  const spent = { apply: 0, commit: 0 };
  const onEvent = (e: ConvertEvent): void => {
    if (e.type !== 'layer' || (e.phase !== 'apply' && e.phase !== 'commit')) return;
    const k = `${e.index}:${e.phase}`;
    if (!started.has(k)) started.set(k, performance.now());
    if (e.done) spent[e.phase] += performance.now() - (started.get(k) as number);
  };
  const out = join(dir, `out-${round}`);
  const t1 = performance.now();
  try {
    const src = await openImageEndpoint(`oci:${layout}:bench`, { access });
    const dst = await openImageEndpoint(`oci:${out}:bench`, { access, create: true });
    const r = await convertImage(src, dst, { workDir: join(dir, 'work'), onEvent });
    const total = performance.now() - t1;
    const m = JSON.parse(readFileSync(join(out, 'blobs', 'sha256', r.descriptor.digest.slice(7)), 'utf8')) as { layers: Array<{ size: number }> };
    return { total, ...spent, blobBytes: m.layers.reduce((s, l) => s + l.size, 0) };
  } finally {
    await access.close();
    rmSync(out, { recursive: true, force: true });
  }
}

/** The conversion's steps one by one, per layer: where the time goes. */
async function profile(dir: string, tars: string[]): Promise<Array<Record<string, number>>> {
  await exec(['sync']);
  const rows: Array<Record<string, number>> = [];
  const lowers: string[] = [];
  const applier = new SubprocessApplier();
  for (const [i, tar] of tars.entries()) {
    const ld = join(dir, `profile-${i}`);
    mkdirSync(ld, { recursive: true });
    const row: Record<string, number> = {};
    const time = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const t = performance.now();
      try {
        return await fn();
      } finally {
        row[name] = performance.now() - t;
      }
    };
    const data = join(ld, 'writable_data');
    const index = join(ld, 'writable_index');
    await time('create', async () => (await createWritableLayer({ data, index, virtualSize: i === 0 ? 64 * 2 ** 30 : 0, sparse: true })).close());
    const cfg: DeviceConfig = {
      repoBlobUrl: '',
      lowers: lowers.map((file) => ({ file, dir: '', digest: '', size: 0, targetFile: '', targetDigest: '', gzipIndex: '' })),
      upper: { data, index, target: '', gzipIndex: '' },
      resultFile: '',
      accelerationLayer: false,
      recordTracePath: '',
      download: undefined,
    };
    applier.prepare(); // as buildLayer does: the apply process starts during the attach
    const device = await openDevice(cfg);
    try {
      const mnt = join(ld, 'mnt');
      mkdirSync(mnt);
      const session = await time('attach+mkfs', () => startSession(device, { target: `bench:${mnt}`, runDir: join(dir, 'run'), mountpoint: mnt, writable: true, mkfs: i === 0 }));
      try {
        await time('apply', () => applier.apply(createReadStream(tar) as AsyncIterable<Uint8Array>, mnt, { maxFileSize: device.size }));
      } finally {
        await time('umount+detach', () => session.stop());
      }
      await time('flush', () => device.flush());
    } finally {
      await device.close();
    }
    const file = join(ld, 'overlaybd.commit');
    await time('commit', () => commitFile({ data, index }, file, { zfile: { algorithm: 'lz4', blockSize: 4096, verify: true, rewriteHeader: true }, tar: true, overwrite: true, uuid: '' }));
    row['upper MiB'] = statSync(data).blocks * 512;
    row['blob MiB'] = statSync(file).size;
    lowers.push(file);
    rows.push(row);
  }
  await applier.close();
  return rows;
}

const dir = mkdtempSync('/var/tmp/obd-bench-convert-');
try {
  const root = await rootfs();
  const bytes = treeBytes(root);
  console.log(`rootfs: debootstrap ${ROOTFS.variant} + ${ROOTFS.packages.join(', ')}: ${(bytes / 1e6).toFixed(0)} MB in regular files`);
  if (bytes < MIN_BYTES) throw new Error(`Cannot run bench/convert: the rootfs holds ${bytes} bytes, less than ${MIN_BYTES}`);
  const { layout, tars } = await buildImage(root, dir);
  console.log(`image: ${tars.length} ${COMPRESSION} layers: ${tars.map((t) => `${(statSync(t).size / 2 ** 20).toFixed(1)} MiB`).join(', ')}`);

  const rows: Array<{ round: number; baseline: number; baseExtract: number; total: number; apply: number; commit: number; blob: number }> = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const b = await baseline(dir, tars);
    const o = await ours(dir, layout, round);
    rows.push({ round, baseline: b.total, baseExtract: b.extract, total: o.total, apply: o.apply, commit: o.commit, blob: o.blobBytes });
  }
  const s = (ms: number): string => (ms / 1000).toFixed(2).padStart(7);
  // [apply] and [commit] sum the layers' phases as the events report them (a layer's commit
  // ends when its blob is hashed, which overlaps the next layer's apply).
  console.log('round  baseline(s) [tar -x]   convert(s) [apply] [commit]   blobs MiB');
  for (const r of rows) console.log(`${String(r.round).padStart(5)}  ${s(r.baseline)} [${s(r.baseExtract)}]   ${s(r.total)} [${s(r.apply)}] [${s(r.commit)}]   ${(r.blob / 2 ** 20).toFixed(1)}`);

  if (process.argv.includes('--profile') || process.env['OBD_BENCH_PROFILE'] === '1') {
    const prof = await profile(dir, tars);
    const cols = Object.keys(prof[0] ?? {});
    console.log(`profile  ${cols.map((c) => c.padStart(14)).join('')}`);
    for (const [i, r] of prof.entries()) {
      console.log(`layer ${i}  ${cols.map((c) => (c.endsWith('MiB') ? ((r[c] ?? 0) / 2 ** 20).toFixed(1) : ((r[c] ?? 0) / 1000).toFixed(2)).padStart(14)).join('')}`);
    }
  }
  const best = <K extends keyof (typeof rows)[number]>(k: K): number => Math.min(...rows.map((r) => r[k]));
  // Per round (ours right after its baseline, under the same load), the best round.
  const ratio = (f: (r: (typeof rows)[number]) => number): string => Math.min(...rows.map(f)).toFixed(2);
  console.log(`RESULT convert/total-ratio ${ratio((r) => r.total / r.baseline)}`);
  console.log(`RESULT convert/apply-ratio ${ratio((r) => r.apply / r.baseExtract)}`);
  console.log(`RESULT convert/throughput-MBps ${(bytes / 1e6 / (best('total') / 1000)).toFixed(1)}`);
} finally {
  unmountUnder(dir);
  rmSync(dir, { recursive: true, force: true });
}
