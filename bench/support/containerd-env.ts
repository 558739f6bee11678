/**
 * A private containerd 1.6 (own config, root, state and socket under a temporary
 * directory) with our snapshotter daemon as proxy snapshotter `overlaybd`, the daemon
 * run as a user runs it: `node dist/src/cli/bin/obd.js snapshotter --config F --run-dir D`
 * (its `obd attach` sessions are then started from dist as well).
 *
 * `stop()` tears everything down, also after failures, each step bounded: tasks and
 * containers of the namespace, the containerd process group and the shims serving its
 * socket, the daemon's process group, every `obd attach` session recorded under the run
 * dir (SIGTERM, then SIGKILL), mounts and loop devices under the directory, the
 * directory itself.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { alive, sh, sleep, spawnContainerd, stopContainerd, stopSessions } from '../../test/support/containerd-process.ts';

/** containerd 1.6 puts shim sockets in /run/containerd/s whatever its config says. */
const RUN_DIR = '/run/containerd';

/** Options of {@link ContainerdEnv.start}. */
export interface ContainerdEnvOptions {
  /** argv prefix running our CLI, e.g. `[process.execPath, 'dist/src/cli/bin/obd.js']`. */
  obd: string[];
  namespace: string;
  /** Registry hosts the snapshotter reaches over plain HTTP. */
  plainHttp: string[];
  /** Extra environment of the snapshotter daemon (e.g. `NODE_DEBUG`). */
  daemonEnv?: Record<string, string>;
}

export { sh };

/** containerd + snapshotter daemon. Start with {@link ContainerdEnv.start}; always `stop()` it. */
export class ContainerdEnv {
  readonly dir: string;
  readonly namespace: string;
  readonly #o: ContainerdEnvOptions;
  #containerd: ChildProcess | undefined;
  #daemon: ChildProcess | undefined;
  #runDirExisted = true;

  private constructor(dir: string, o: ContainerdEnvOptions) {
    this.dir = dir;
    this.namespace = o.namespace;
    this.#o = o;
  }

  get socket(): string {
    return join(this.dir, 'containerd.sock');
  }

  /** The daemon's pull socket (`rpull.sock` beside its gRPC socket), for `obd rpull --daemon`. */
  get pullSocket(): string {
    return join(this.dir, 'rpull.sock');
  }

  /** Where the snapshotter's `obd attach` sessions are recorded. */
  get runDir(): string {
    return join(this.dir, 'run');
  }

  get snapshotterRoot(): string {
    return join(this.dir, 'sn');
  }

  /** Starts both; on failure stops whatever started and rethrows. */
  static async start(o: ContainerdEnvOptions): Promise<ContainerdEnv> {
    // Short path: unix socket paths are limited to 108 bytes.
    const env = new ContainerdEnv(await mkdtemp('/tmp/obd-cs-'), o);
    try {
      await env.#start();
    } catch (e) {
      await env.stop();
      throw e;
    }
    return env;
  }

  async #start(): Promise<void> {
    this.#runDirExisted = existsSync(RUN_DIR);
    const snConfig = join(this.dir, 'snapshotter.json');
    await writeFile(
      snConfig,
      JSON.stringify({
        root: this.snapshotterRoot,
        address: join(this.dir, 'sn.sock'),
        rwMode: 'overlayfs',
        mirrorRegistry: this.#o.plainHttp.map((host) => ({ host, insecure: true })),
      }),
    );
    const daemonLog = openSync(join(this.dir, 'snapshotter.log'), 'w');
    this.#daemon = spawn(this.#o.obd[0] as string, [...this.#o.obd.slice(1), 'snapshotter', '--config', snConfig, '--run-dir', this.runDir], {
      detached: true,
      stdio: ['ignore', daemonLog, daemonLog],
      env: { ...process.env, ...this.#o.daemonEnv },
    });
    closeSync(daemonLog);
    await this.#waitFor('the snapshotter daemon', this.#daemon, async () => (await readFile(join(this.dir, 'snapshotter.log'), 'utf8')).includes('snapshotter: serving'));

    this.#containerd = await spawnContainerd({ dir: this.dir, socket: this.socket, snapshotterSocket: join(this.dir, 'sn.sock') });
    await this.#waitFor('containerd', this.#containerd, async () => {
      try {
        await sh(['ctr', '-a', this.socket, 'version'], 5000);
        return true;
      } catch {
        return false;
      }
    });
  }

  async #waitFor(what: string, child: ChildProcess, ready: () => Promise<boolean>): Promise<void> {
    const deadline = Date.now() + 60_000;
    while (!(await ready())) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`Cannot start ${what}: it exited with ${child.exitCode ?? child.signalCode}`);
      if (Date.now() > deadline) throw new Error(`Cannot start ${what}: not ready after 60 s`);
      await sleep(100);
    }
  }

  /** `ctr -a SOCK -n NS ARGS`. */
  ctr(args: string[], timeoutMs = 600_000): Promise<string> {
    return sh(['ctr', '-a', this.socket, '-n', this.namespace, ...args], timeoutMs);
  }

  /** `ctr run --rm` with runc state and FIFOs under the directory. */
  run(args: string[], timeoutMs = 600_000): Promise<string> {
    return this.ctr(['run', '--rm', '--runc-root', join(this.dir, 'runc'), '--fifo-dir', join(this.dir, 'fifo'), ...args], timeoutMs);
  }

  /** Runs containerd's garbage collector now (deleting a lease with `--sync` collects synchronously). */
  async collectGarbage(): Promise<void> {
    const id = `obd-gc-${Date.now()}`;
    await this.ctr(['leases', 'create', '--id', id]);
    await this.ctr(['leases', 'rm', '--sync', id]);
  }

  /** The snapshotter daemon's log so far. */
  daemonLog(): string {
    try {
      return readFileSync(join(this.dir, 'snapshotter.log'), 'utf8');
    } catch {
      return '';
    }
  }

  /** PIDs of processes (shims) whose command line names our containerd socket. */
  #shimPids(): number[] {
    const out: number[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        if (readFileSync(`/proc/${name}/cmdline`, 'latin1').split('\0').includes(this.socket)) out.push(Number(name));
      } catch {
        // gone
      }
    }
    return out.filter((p) => p !== this.#containerd?.pid);
  }

  async #killGroup(child: ChildProcess | undefined): Promise<void> {
    if (child?.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once('exit', () => r()));
    const kill = (sig: NodeJS.Signals): void => {
      try {
        process.kill(-child.pid!, sig);
      } catch {
        // already gone
      }
    };
    kill('SIGTERM');
    const timer = setTimeout(() => kill('SIGKILL'), 10_000);
    await Promise.race([exited, sleep(15_000)]);
    clearTimeout(timer);
  }

  /** Tears everything down; reports (never throws) what it could not clean. */
  async stop(report: (line: string) => void = (l) => console.error(l)): Promise<void> {
    const tidy = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (e) {
        report(`cleanup (${what}): ${(e as Error).message}`);
      }
    };
    const containerd = this.#containerd;
    if (containerd !== undefined) await stopContainerd(containerd, (...args) => this.ctr(args, 30_000), (what, e) => report(`cleanup (${what}): ${e.message}`));
    for (const pid of this.#shimPids()) await tidy(`shim ${pid}`, async () => process.kill(pid, 'SIGKILL'));
    await tidy('daemon', () => this.#killGroup(this.#daemon));
    // Sessions: SIGTERM lets each tear down its mount, loop device and FUSE connection.
    let pids: number[] = [];
    await tidy('sessions', async () => {
      pids = await stopSessions(this.runDir);
    });
    await tidy('mounts', async () => {
      // Ours, and ctr's temporary rootfs mounts (/tmp/containerd-mount*) over our snapshots
      // when a `ctr run` was killed half-way.
      for (const line of readFileSync('/proc/mounts', 'utf8').split('\n').reverse()) {
        const mp = line.split(' ')[1];
        if (mp === undefined || !(mp.startsWith(this.dir) || line.includes(`${this.dir}/`))) continue;
        spawnSync('umount', ['-l', mp], { timeout: 10_000 });
        if (!mp.startsWith(this.dir)) await rmdir(mp).catch(() => undefined);
      }
    });
    await tidy('loops', async () => {
      for (const line of spawnSync('losetup', ['-a'], { encoding: 'utf8', timeout: 10_000 }).stdout.split('\n')) {
        if (line.includes(this.dir)) spawnSync('losetup', ['-d', line.split(':')[0] as string], { timeout: 10_000 });
      }
    });
    for (const pid of pids) {
      await tidy(`session ${pid}`, async () => {
        if (alive(pid)) process.kill(pid, 'SIGKILL');
      });
    }
    await tidy('dir', () => rm(this.dir, { recursive: true, force: true }));
    if (!this.#runDirExisted) {
      for (const d of [join(RUN_DIR, 's'), join(RUN_DIR, 'fifo'), RUN_DIR]) await rmdir(d).catch(() => undefined);
    }
  }
}
