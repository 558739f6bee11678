/**
 * The reference unpacker of the convertor's acceptance tests: a private containerd 1.6
 * (Debian's) with its default overlayfs snapshotter, CRI disabled, root, state and
 * sockets in a temporary directory. `unpack()` imports an OCI layout (`ctr images
 * import` of its tarball, which unpacks the layers with containerd's own applier), takes
 * a read-only view of the top snapshot (`ctr snapshots view --mounts`, keyed by the
 * image's chain ID) and mounts what containerd answers: the tree a container of that
 * image would see.
 *
 * `stop()` tears everything down, also after failures: our mounts, the containerd
 * process group (SIGKILL after 10 s), any shim naming our socket, the directory, and
 * /run/containerd when this run created it and it is empty.
 *
 * @example
 * ```ts
 * const ctd = await startContainerd();
 * try {
 *   const view = await ctd.unpack(layoutDir, 'v1');
 *   assert.equal(await diffTrees(view.root, convertedMount), undefined);
 * } finally {
 *   await ctd.stop();
 * }
 * ```
 */
import { execFile, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, rmdir } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { chainIds } from '../../src/convert/chain-id.ts';
import { spawnContainerd } from './containerd-process.ts';

const TOOLS = ['/usr/bin/containerd', '/usr/bin/ctr'];
/** containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says. */
const RUN_DIR = '/run/containerd';
const NS = 'obdconvert';
const ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64' };

/** Why the containerd reference cannot run here, or false. */
export function containerdSkipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  const missing = TOOLS.filter((t) => !existsSync(t));
  return missing.length > 0 ? `needs containerd and ctr (missing ${missing.join(', ')})` : false;
}

/** A mounted, read-only view of an image's root file system as containerd unpacked it. */
export interface UnpackedImage {
  readonly root: string;
  /** Unmounts the view and removes the snapshot. */
  release(): Promise<void>;
}

export interface ContainerdReference {
  /** Imports the image tagged `tag` in the OCI layout `layout` and mounts its root file system. */
  unpack(layout: string, tag: string): Promise<UnpackedImage>;
  stop(): Promise<void>;
}

function sh(argv: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: timeoutMs, maxBuffer: 64 << 20, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4]?.replace(/\\040/g, ' '))
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(dir + sep)))
    .sort((a, b) => b.length - a.length);
}

/** The diff IDs of the image `tag` in `layout` (the host platform's manifest of an index). */
async function diffIdsOf(layout: string, tag: string): Promise<string[]> {
  const blob = async <T>(digest: string): Promise<T> => JSON.parse(await readFile(join(layout, 'blobs', 'sha256', digest.slice(7)), 'utf8')) as T;
  interface Desc {
    digest: string;
    mediaType?: string;
    platform?: { architecture: string; os: string };
    annotations?: Record<string, string>;
  }
  const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as { manifests: Desc[] };
  let desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (desc === undefined) throw new Error(`Cannot find tag ${tag} in ${layout}`);
  for (let depth = 0; depth < 4; depth++) {
    const doc: { manifests?: Desc[]; config?: { digest: string } } = await blob(desc.digest);
    if (doc.config !== undefined) return (await blob<{ rootfs: { diff_ids: string[] } }>(doc.config.digest)).rootfs.diff_ids;
    desc = doc.manifests?.find((m: Desc) => m.platform?.os === 'linux' && m.platform.architecture === (ARCH[process.arch] ?? process.arch));
    if (desc === undefined) throw new Error(`Cannot find a linux/${process.arch} manifest for ${tag} in ${layout}`);
  }
  throw new Error(`Cannot resolve ${tag} in ${layout}: indexes nested too deep`);
}

/** Starts a private containerd; the caller must `stop()` it (in `after()`). */
export async function startContainerd(): Promise<ContainerdReference> {
  const runDirExisted = existsSync(RUN_DIR);
  // Short path: unix socket paths are limited to 108 bytes.
  const dir = await mkdtemp('/tmp/obd-ctdref-');
  const sock = join(dir, 'containerd.sock');
  const ctr = (...args: string[]): Promise<string> => sh(['ctr', '-a', sock, '-n', NS, ...args]);
  const containerd: ChildProcess = await spawnContainerd({ dir: dir, socket: sock });
  const exited = new Promise<void>((r) => containerd.once('exit', () => r()));
  let n = 0;

  const stop = async (): Promise<void> => {
    for (const p of mountsUnder(dir)) await sh(['umount', '-l', p]).catch(() => undefined);
    if (containerd.exitCode === null && containerd.signalCode === null && containerd.pid !== undefined) {
      const pid = containerd.pid;
      try {
        process.kill(-pid, 'SIGTERM');
      } catch {
        // already gone
      }
      const timer = setTimeout(() => {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }, 10_000);
      await exited;
      clearTimeout(timer);
    }
    // No container runs here, so no shim should exist; kill any that names our socket.
    for (const name of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
      try {
        if (readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').includes(sock)) process.kill(Number(name), 'SIGKILL');
      } catch {
        // gone
      }
    }
    for (const p of mountsUnder(dir)) await sh(['umount', '-l', p]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    if (!runDirExisted) {
      for (const d of [join(RUN_DIR, 's'), join(RUN_DIR, 'fifo'), RUN_DIR]) await rmdir(d).catch(() => undefined);
    }
  };

  try {
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (containerd.exitCode !== null) throw new Error(`containerd exited with ${containerd.exitCode}: ${await readFile(join(dir, 'containerd.log'), 'utf8').catch(() => '')}`);
      try {
        await sh(['ctr', '-a', sock, 'version'], 5000);
        break;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    async unpack(layout, tag) {
      const id = `i${++n}`;
      const archive = join(dir, `${id}.tar`);
      await sh(['tar', '-C', layout, '-cf', archive, 'oci-layout', 'index.json', 'blobs']);
      // Unpacks into the default (overlayfs) snapshotter for the host platform.
      await ctr('images', 'import', '--base-name', `obd.test/${id}`, archive);
      await rm(archive);
      const top = chainIds(await diffIdsOf(layout, tag)).at(-1) as string;
      const key = `view-${id}`;
      const mounts = JSON.parse(await ctr('snapshots', 'view', '--mounts', key, top)) as Array<{ Type: string; Source: string; Options: string[] | null }>;
      const root = join(dir, `root-${id}`);
      await mkdir(root);
      for (const m of mounts) {
        const options = (m.Options ?? []).join(',');
        await sh(['mount', '-t', m.Type, ...(options === '' ? [] : ['-o', options]), m.Source, root]);
      }
      return {
        root,
        async release() {
          for (const p of mountsUnder(root)) await sh(['umount', p]);
          await rmdir(root);
          // ctr takes the view under a lease of its own that ends when it exits; containerd's
          // garbage collector may already have removed the snapshot. The mount does not
          // depend on it: its directories are the image's committed layer snapshots.
          await ctr('snapshots', 'rm', key).catch((e: unknown) => {
            if (!/not found/.test(String(e))) throw e;
          });
        },
      };
    },
    stop,
  };
}
