/**
 * The benchmarks' images (cold-start, convert), built once and cached under a directory keyed by
 * their inputs (reruns skip every step whose inputs did not change):
 *
 * 1. `rootfs-<key>`: a Debian rootfs by `debootstrap --variant=minbase --include=PKGS`
 *    (key: suite, variant, packages, mirror);
 * 2. `oci-<key>`: an OCI image layout (tag `oci`) whose rootfs is split into a few
 *    gzip layers by path, as a Dockerfile build would stack them (key: the rootfs key,
 *    the split, the config);
 * 3. `obd-<key>`: that image converted by our convertor (`obd convert`, tag `obd`)
 *    (key: the OCI key and the convertor's sources: src/convert, src/formats,
 *    src/image); a new conversion removes the older ones.
 *
 * Each step builds into `<dir>.tmp` and renames it into place when complete, so a
 * failed or interrupted build is redone next time.
 */
import { createHash } from 'node:crypto';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { OciLayout } from '../../src/image/oci-layout.ts';
import { MEDIA_TYPES, type Descriptor } from '../../src/image/descriptor.ts';

/** What debootstrap builds. */
export interface RootfsSpec {
  suite: string;
  variant: string;
  packages: string[];
  mirror: string;
}

/** One layer: the rootfs paths it holds (relative, `./usr/share`), minus `exclude`. */
export interface LayerSpec {
  paths: string[];
  exclude?: string[];
}

/** The built images. */
export interface BenchImages {
  rootfs: string;
  /** Bytes of the rootfs (apparent sizes of regular files). */
  rootfsBytes: number;
  /** OCI layout directory; tag `oci`. */
  oci: string;
  /** Sum of the OCI image's (gzip) layer sizes. */
  ociLayerBytes: number;
  /** overlaybd OCI layout directory; tag `obd`. */
  obd: string;
  /** Sum of the overlaybd image's layer blob sizes. */
  obdLayerBytes: number;
}

/** The benches' image: Debian bookworm minbase with `packages` (default python3, pip, numpy: 242 MB). */
export function pythonRootfs(packages = 'python3,python3-pip,python3-numpy'): RootfsSpec {
  return { suite: 'bookworm', variant: 'minbase', packages: packages.split(','), mirror: 'http://deb.debian.org/debian' };
}

const PYTHON_PATHS = ['./usr/lib/python3', './usr/lib/python3.11', './usr/share/python3'];
/** Its layers bottom-up, as a Dockerfile would stack them: base system, shared data, the Python stack. */
export const PYTHON_LAYERS: LayerSpec[] = [
  { paths: ['.'], exclude: ['./dev/*', './proc/*', './sys/*', './run/*', './tmp/*', './usr/share/*', ...PYTHON_PATHS] },
  { paths: ['./usr/share'], exclude: PYTHON_PATHS },
  { paths: PYTHON_PATHS },
];

const key = (x: unknown): string => createHash('sha256').update(JSON.stringify(x)).digest('hex').slice(0, 16);

function run(argv: string[], o: { timeoutMs: number; cwd?: string }): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: o.timeoutMs, maxBuffer: 64 << 20, ...(o.cwd ? { cwd: o.cwd } : {}) }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr.slice(-4000)}`));
      else resolve(stdout);
    });
  });
}

/**
 * Unmounts whatever is mounted under `dir` (debootstrap mounts /proc and may bind /dev
 * into its target; removing the tree with those mounted would reach the host's).
 */
export function unmountUnder(dir: string): void {
  const mounts = readFileSync('/proc/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1] ?? '');
  for (const mp of mounts.reverse()) {
    if (mp.startsWith(`${dir}/`)) spawnSync('umount', ['-l', mp], { timeout: 10_000 });
  }
}

/** Runs `build(tmp)` unless `dir` exists; renames the result into place. */
async function cached(dir: string, build: (tmp: string) => Promise<void>): Promise<string> {
  if (existsSync(dir)) return dir;
  const tmp = `${dir}.tmp`;
  unmountUnder(tmp);
  await rm(tmp, { recursive: true, force: true });
  await mkdir(tmp, { recursive: true });
  try {
    await build(tmp);
  } catch (e) {
    unmountUnder(tmp);
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  unmountUnder(tmp);
  await rename(tmp, dir);
  return dir;
}

/** Apparent bytes of the regular files under `dir`, not following symlinks. */
export function treeBytes(dir: string): number {
  let n = 0;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) n += statSync(p).size;
    }
  };
  walk(dir);
  return n;
}

/** Hash of every file under the given source folders (the convertor's identity). */
function sourceKey(root: string, folders: string[]): string {
  const h = createHash('sha256');
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile() && !e.name.endsWith('.test.ts')) h.update(p).update(readFileSync(p));
    }
  };
  for (const f of folders) walk(join(root, f));
  return h.digest('hex').slice(0, 16);
}

async function layerDescriptors(layoutDir: string, tag: string): Promise<Descriptor[]> {
  const index = JSON.parse(await readFile(join(layoutDir, 'index.json'), 'utf8')) as { manifests: Array<Descriptor & { annotations?: Record<string, string> }> };
  const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (desc === undefined) throw new Error(`Cannot read OCI layout ${layoutDir}: no tag ${tag}`);
  const [, hex] = desc.digest.split(':');
  const manifest = JSON.parse(await readFile(join(layoutDir, 'blobs', 'sha256', hex as string), 'utf8')) as { layers: Descriptor[] };
  return manifest.layers;
}

async function layerBytes(layoutDir: string, tag: string): Promise<number> {
  return (await layerDescriptors(layoutDir, tag)).reduce((s, l) => s + l.size, 0);
}

async function writeOciImage(tmp: string, rootfs: string, o: { layers: LayerSpec[]; compression: 'gzip' | 'none' }): Promise<void> {
  const layers = o.layers;
  const layout = await OciLayout.openOrCreate(tmp);
  const descs: Descriptor[] = [];
  const diffIds: string[] = [];
  for (const [i, l] of layers.entries()) {
    const tar = join(tmp, `layer-${i}.tar`);
    // Parent directories of the paths come first without their contents (as docker does).
    const parents = new Set<string>();
    for (const p of l.paths) {
      const parts = p.split('/');
      for (let j = 2; j < parts.length; j++) parents.add(parts.slice(0, j).join('/'));
    }
    parents.delete('.');
    await run(
      [
        'tar', '--create', '--file', tar, '--numeric-owner', '--xattrs', "--xattrs-include=*", '--sort=name', '--directory', rootfs,
        ...(l.exclude ?? []).map((x) => `--exclude=${x}`),
        '--no-recursion', ...[...parents].sort(), '--recursion', ...l.paths,
      ],
      { timeoutMs: 600_000 },
    );
    diffIds.push(`sha256:${(await run(['sha256sum', tar], { timeoutMs: 300_000 })).split(' ')[0]}`);
    const gzip = o.compression === 'gzip';
    if (gzip) await run(['gzip', '-6', '-n', tar], { timeoutMs: 600_000 });
    const file = gzip ? `${tar}.gz` : tar;
    const blob = new Uint8Array(await readFile(file));
    await rm(file);
    descs.push({ mediaType: gzip ? MEDIA_TYPES.ociLayerGzip : MEDIA_TYPES.ociLayerTar, digest: await layout.writeBlob(blob), size: blob.length });
  }
  const config = new TextEncoder().encode(
    JSON.stringify({
      created: '2024-05-06T07:08:09Z',
      architecture: 'amd64',
      os: 'linux',
      config: { Env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: ['python3'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: layers.map((l) => ({ created: '2024-05-06T07:08:09Z', created_by: `COPY ${l.paths.join(' ')}` })),
    }),
  );
  const configDigest = await layout.writeBlob(config);
  const manifest = new TextEncoder().encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociManifest,
      config: { mediaType: MEDIA_TYPES.ociConfig, digest: configDigest, size: config.length },
      layers: descs,
    }),
  );
  const digest = await layout.writeBlob(manifest);
  await layout.tag({ mediaType: MEDIA_TYPES.ociManifest, digest, size: manifest.length }, 'oci');
}

/** The debootstrap rootfs of `rootfs` (cached); returns its directory. */
export async function benchRootfs(o: { cacheDir: string; rootfs: RootfsSpec; log: (line: string) => void }): Promise<string> {
  await mkdir(o.cacheDir, { recursive: true });
  const dir = await cached(join(o.cacheDir, `rootfs-${key(o.rootfs)}`), async (tmp) => {
    o.log(`building the rootfs with debootstrap (${o.rootfs.packages.join(', ')}) into ${tmp}`);
    await run(
      ['debootstrap', `--variant=${o.rootfs.variant}`, `--include=${o.rootfs.packages.join(',')}`, o.rootfs.suite, join(tmp, 'rootfs'), o.rootfs.mirror],
      { timeoutMs: 1_800_000 },
    );
    // What docker images of Debian drop: package lists and the apt cache.
    await run(['sh', '-c', `rm -rf "${tmp}"/rootfs/var/lib/apt/lists/* "${tmp}"/rootfs/var/cache/apt/*`], { timeoutMs: 60_000 });
  });
  return join(dir, 'rootfs');
}

/** The OCI image of the rootfs split into `layers` (cached layout, tag `oci`); its key for what derives from it. */
export async function benchOciImage(o: {
  cacheDir: string;
  rootfs: RootfsSpec;
  layers: LayerSpec[];
  compression?: 'gzip' | 'none';
  log: (line: string) => void;
}): Promise<{ rootfs: string; layout: string; key: string }> {
  const rootfs = await benchRootfs(o);
  const compression = o.compression ?? 'gzip';
  const ociKey = key({ rootKey: key(o.rootfs), layers: o.layers, v: 1, ...(compression === 'gzip' ? {} : { compression }) });
  const layout = await cached(join(o.cacheDir, `oci-${ociKey}`), async (tmp) => {
    o.log(`writing the OCI image (${o.layers.length} ${compression} layers) into ${tmp}`);
    await writeOciImage(tmp, rootfs, { layers: o.layers, compression });
  });
  return { rootfs, layout, key: ociKey };
}

/** The layer blob files of the image tagged `tag` in a layout, bottom first. */
export async function layerBlobFiles(layoutDir: string, tag: string): Promise<string[]> {
  return (await layerDescriptors(layoutDir, tag)).map((l) => join(layoutDir, 'blobs', 'sha256', l.digest.slice(7)));
}

/**
 * Builds (or finds cached) the rootfs, the OCI image and its overlaybd conversion.
 * `obd` is the argv prefix that runs our CLI (e.g. `['node', 'dist/src/cli/bin/obd.js']`).
 */
export async function benchImages(o: {
  cacheDir: string;
  repoRoot: string;
  rootfs: RootfsSpec;
  layers: LayerSpec[];
  obd: string[];
  /** ZFile compression of the conversion (`obd convert --algorithm`); default lz4, the convertor's default. */
  algorithm?: 'lz4' | 'zstd';
  log: (line: string) => void;
}): Promise<BenchImages> {
  const { rootfs, layout: oci, key: ociKey } = await benchOciImage(o);
  const algorithm = o.algorithm ?? 'lz4';
  const obdKey = key({ ociKey, convertor: sourceKey(o.repoRoot, ['src/convert', 'src/formats', 'src/image']) });
  // One cached conversion per algorithm: `obd-<key>` (lz4), `obd-zstd-<key>`.
  const prefix = algorithm === 'lz4' ? 'obd-' : `obd-${algorithm}-`;
  const obd = await cached(join(o.cacheDir, `${prefix}${obdKey}`), async (tmp) => {
    // Conversions by older convertor sources are never used again: keep one per algorithm.
    for (const e of readdirSync(o.cacheDir)) {
      if (/^[0-9a-f]+(\.tmp)?$/.test(e.startsWith(prefix) ? e.slice(prefix.length) : '-') && join(o.cacheDir, e) !== tmp) await rm(join(o.cacheDir, e), { recursive: true, force: true });
    }
    o.log(`converting it with obd convert --algorithm ${algorithm} into ${tmp}`);
    await run([...o.obd, 'convert', `oci:${oci}:oci`, `oci:${tmp}:obd`, '--no-db', '--algorithm', algorithm, '--work-dir', join(tmp, 'work')], { timeoutMs: 1_800_000 });
    await rm(join(tmp, 'work'), { recursive: true, force: true });
  });
  return {
    rootfs,
    rootfsBytes: treeBytes(rootfs),
    oci,
    ociLayerBytes: await layerBytes(oci, 'oci'),
    obd,
    obdLayerBytes: await layerBytes(obd, 'obd'),
  };
}
