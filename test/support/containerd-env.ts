/**
 * A private containerd 1.6 for end-to-end tests of the snapshotter (needs root,
 * containerd, ctr and runc): root, state and sockets in a temporary directory, CRI
 * disabled, our snapshotter declared as proxy snapshotter `overlaybd`. Plus the
 * snapshotter daemon as a real separate process (`obd snapshotter CONFIG`, the CLI), which
 * tests may SIGKILL and start again, and a teardown that removes everything the tests
 * made, also after failures: tasks and containers of the namespace, the containerd
 * process group, shims serving its socket, the daemon, `obd attach` sessions recorded
 * in the run dir, mounts and loop devices under the directory, the directory.
 *
 * @example
 * ```ts
 * const env = await ContainerdEnv.create({ prefix: '/tmp/obd-x-', namespace: 'x' });
 * await env.startSnapshotter({ mirrorRegistry: [] });
 * await env.startContainerd();
 * await env.ctr('images', 'ls');
 * await env.cleanup();
 * ```
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { listSessions, type SessionRecord } from '../../src/attach/session.ts';
import { alive, sh, sleep, spawnContainerd, stopContainerd } from './containerd-process.ts';

/** containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says. */
const RUN_DIR = '/run/containerd';
const OBD_BIN = fileURLToPath(new URL('../../src/cli/bin/obd.ts', import.meta.url));
const REPO = fileURLToPath(new URL('../..', import.meta.url));

function which(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { timeout: 5000 }).status === 0;
}

/** Why the containerd tests cannot run here, or false. */
export function containerdSkipReason(extraTools: string[] = []): string | false {
  if (process.getuid?.() !== 0) return 'needs root';
  const missing = ['containerd', 'ctr', 'runc', 'losetup', ...extraTools].filter((t) => !which(t));
  if (missing.length > 0) return `needs ${missing.join(', ')} (apt-get install containerd runc docker-registry busybox-static)`;
  if (!existsSync('/dev/fuse')) return 'needs /dev/fuse';
  return false;
}

export { sh };

/** One mount of /proc/self/mountinfo. */
export interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
  options: string;
}

/** Mounts of the host (this process's mount namespace). */
export function hostMounts(): MountInfo[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [pre = '', post = ''] = line.split(' - ');
      const f = pre.split(' ');
      const p = post.split(' ');
      const unescape = (s: string): string => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
      return { mountpoint: unescape(f[4] ?? ''), fstype: p[0] ?? '', source: unescape(p[1] ?? ''), options: p[2] ?? '' };
    });
}

/** A private containerd and our snapshotter daemon, see the module comment. */
export class ContainerdEnv {
  readonly dir: string;
  readonly namespace: string;
  /** Run dir of the `obd attach` sessions the snapshotter starts. */
  readonly runDir: string;
  readonly snapshotterRoot: string;
  readonly snapshotterSocket: string;
  #containerd: ChildProcess | undefined;
  #daemon: ChildProcess | undefined;
  #daemonLog = '';
  #runDirExisted = true;
  readonly #sessionPids = new Set<number>();

  private constructor(dir: string, namespace: string) {
    this.dir = dir;
    this.namespace = namespace;
    this.runDir = join(dir, 'run');
    this.snapshotterRoot = join(dir, 'sn');
    this.snapshotterSocket = join(dir, 'sn.sock');
  }

  /** Makes the temporary directory (keep `prefix` short: unix socket paths are limited to 108 bytes). */
  static async create(o: { prefix: string; namespace: string }): Promise<ContainerdEnv> {
    const env = new ContainerdEnv(await mkdtemp(o.prefix), o.namespace);
    env.#runDirExisted = existsSync(RUN_DIR);
    return env;
  }

  get sock(): string {
    return join(this.dir, 'containerd.sock');
  }

  /** The daemon process, while running. */
  get daemonPid(): number | undefined {
    const d = this.#daemon;
    return d !== undefined && d.exitCode === null && d.signalCode === null ? d.pid : undefined;
  }

  /** `ctr -a SOCK -n NS ARGS`. */
  ctr(...args: string[]): Promise<string> {
    return sh(['ctr', '-a', this.sock, '-n', this.namespace, ...args]);
  }

  /** `ctr run --snapshotter overlaybd` with runc root and fifos in the temporary directory. */
  ctrRun(...args: string[]): Promise<string> {
    return this.ctr('run', '--snapshotter', 'overlaybd', '--runc-root', join(this.dir, 'runc'), '--fifo-dir', join(this.dir, 'fifo'), ...args);
  }

  /** Runs containerd's garbage collector now: deleting a lease with `--sync` collects synchronously. */
  async collectGarbage(): Promise<void> {
    const id = `obd-gc-${Date.now()}`;
    await this.ctr('leases', 'create', '--id', id);
    await this.ctr('leases', 'rm', '--sync', id);
  }

  /** Writes the snapshotter's config file (upstream's format) and returns its path. */
  async writeSnapshotterConfig(extra: Record<string, unknown> = {}): Promise<string> {
    const file = join(this.dir, 'snapshotter.json');
    await writeFile(file, JSON.stringify({ root: this.snapshotterRoot, address: this.snapshotterSocket, rwMode: 'overlayfs', ...extra }));
    return file;
  }

  /**
   * Starts `obd snapshotter F --run-dir D` (the config path as its argument, as in the
   * systemd unit of docs/snapshotter.md) as a separate process and waits until it serves. The config file must exist ({@link writeSnapshotterConfig}).
   */
  async startSnapshotter(timeoutMs = 60_000): Promise<number> {
    if (this.daemonPid !== undefined) throw new Error('the snapshotter daemon is already running');
    const config = join(this.dir, 'snapshotter.json');
    const child = spawn(process.execPath, ['--import', 'tsx', OBD_BIN, 'snapshotter', config, '--run-dir', this.runDir], {
      cwd: REPO,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_DEBUG: 'obd' },
    });
    this.#daemon = child;
    let out = '';
    child.stderr.on('data', (d: Buffer) => {
      this.#daemonLog = (this.#daemonLog + d.toString()).slice(-64 * 1024);
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`obd snapshotter did not serve within ${timeoutMs} ms: ${this.#daemonLog}`)), timeoutMs);
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('snapshotter: serving')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`obd snapshotter exited (${code ?? signal}) before serving: ${this.#daemonLog}`));
      });
    });
    return child.pid as number;
  }

  /** Runs `obd snapshotter CONFIG` once more, in the foreground: for start-up failures. Killed after `timeoutMs`. */
  async runSecondSnapshotter(timeoutMs = 60_000): Promise<{ code: number | null; stderr: string }> {
    const child = spawn(process.execPath, ['--import', 'tsx', OBD_BIN, 'snapshotter', join(this.dir, 'snapshotter.json'), '--run-dir', this.runDir], {
      cwd: REPO,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
    clearTimeout(timer);
    return { code, stderr };
  }

  /** The daemon's recent stderr (NODE_DEBUG=obd). */
  get daemonLog(): string {
    return this.#daemonLog;
  }

  /** Stops the daemon with `signal` and waits for it to exit (SIGKILL after 10 s). */
  async stopSnapshotter(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    const child = this.#daemon;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const code = await exited;
    clearTimeout(timer);
    return code;
  }

  /** Starts containerd with a private config naming our snapshotter socket `overlaybd`. */
  async startContainerd(): Promise<void> {
    this.#containerd = await spawnContainerd({ dir: this.dir, socket: this.sock, snapshotterSocket: this.snapshotterSocket });
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (this.#containerd.exitCode !== null) {
        throw new Error(`containerd exited with ${this.#containerd.exitCode}: ${await readFile(join(this.dir, 'containerd.log'), 'utf8').catch(() => '')}`);
      }
      try {
        await sh(['ctr', '-a', this.sock, 'version'], 5000);
        return;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await sleep(200);
      }
    }
  }

  /** PIDs of processes (shims) whose command line names our containerd socket. */
  shimPids(): number[] {
    const out: number[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        if (readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').includes(this.sock)) out.push(Number(name));
      } catch {
        // gone
      }
    }
    return out.filter((p) => p !== this.#containerd?.pid);
  }

  /** `obd attach` sessions the snapshotter started (remembered for the teardown). */
  async sessions(): Promise<SessionRecord[]> {
    const list = await listSessions(this.runDir);
    for (const s of list) this.#sessionPids.add(s.pid);
    return list;
  }

  /** Removes everything, see the module comment; never throws (problems go to stderr). */
  async cleanup(): Promise<void> {
    const tidy = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        console.error(`cleanup (${what}): ${(e as Error).message}`);
      }
    };
    const containerd = this.#containerd;
    if (containerd !== undefined) await stopContainerd(containerd, (...args) => this.ctr(...args), (what, e) => console.error(`cleanup (${what}): ${e.message}`));
    for (const pid of this.shimPids()) await tidy(`shim ${pid}`, async () => process.kill(pid, 'SIGKILL'));
    await tidy('daemon', () => this.stopSnapshotter());
    // Sessions: SIGTERM lets each tear down its mount, loop device and FUSE connection.
    await tidy('sessions', async () => {
      await this.sessions();
      for (const pid of this.#sessionPids) {
        try {
          process.kill(pid, 'SIGTERM');
        } catch {
          // gone
        }
      }
      for (let i = 0; i < 150 && [...this.#sessionPids].some(alive); i++) await sleep(100);
    });
    await tidy('mounts', async () => {
      for (const m of hostMounts().reverse()) {
        if (m.mountpoint.startsWith(this.dir)) spawnSync('umount', ['-l', m.mountpoint], { timeout: 10_000 });
      }
    });
    await tidy('loops', async () => {
      for (const line of spawnSync('losetup', ['-a'], { encoding: 'utf8', timeout: 10_000 }).stdout.split('\n')) {
        if (line.includes(this.dir)) spawnSync('losetup', ['-d', line.split(':')[0] as string], { timeout: 10_000 });
      }
    });
    for (const pid of this.#sessionPids) {
      await tidy(`session ${pid}`, async () => {
        if (alive(pid)) process.kill(pid, 'SIGKILL');
      });
    }
    await tidy('dir', () => rm(this.dir, { recursive: true, force: true }));
    if (!this.#runDirExisted) {
      // Only empty directories are removed: anything else there is not ours.
      for (const d of [join(RUN_DIR, 's'), join(RUN_DIR, 'fifo'), RUN_DIR]) await rmdir(d).catch(() => undefined);
    }
  }
}
