/**
 * A FUSE connection that survives its server: this (supervisor) process owns
 * `/dev/fuse` and the mount and never touches the data; the device is served by a
 * child process (`runFuseServerChild`) that inherits the fd. When the child dies for any
 * reason while the connection is up, the supervisor starts another one at once (a spare
 * child, already loaded, when there is one); the new child opens the device again and
 * writes FUSE_NOTIFY_RESEND, so the kernel resends what the dead one had read but not
 * answered. Callers of the mount only see a pause.
 *
 * The supervisor stays small on purpose: no device, no data buffers, so its heap is
 * small and every spawn (children, losetup, mount, mkfs) is cheap; the serving child
 * spawns nothing.
 *
 * Limits: when a new child cannot open the device or serve (`maxFailures` times in a
 * row), or children keep dying within `quickDeathMs` of starting to serve (a request
 * that kills every server), the supervisor gives up: it aborts the connection (callers
 * get EIO instead of waiting forever) and `closed` resolves.
 *
 * @example
 * ```ts
 * const fuse = await superviseFuse({ mountpoint: dir, device: config,
 *   server: { command: process.execPath, args: ['obd.js', 'serve-fuse'] } });
 * // losetup -f --show --direct-io=on fuse.path …
 * await fuse.unmount();
 * ```
 */
import { spawn } from 'node:child_process';
import { closeSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { debuglog } from 'node:util';
import { join } from 'node:path';
import diagnostics from 'node:diagnostics_channel';
import { errorClassOf, FailedPreconditionError, UnavailableError } from '../io/errors.ts';
import { openFuse, openFuseDevice } from '../fuse/open-fuse.ts';
import type { FuseMountpoint } from '../fuse/open-fuse.ts';
import { fuseFileConfig } from '../fuse/serve-fuse-fd.ts';
import type { FuseFileConfig } from '../fuse/request-handler.ts';
import type { InitOut } from '../fuse/protocol.ts';
import type { ServerMessage, SupervisorMessage } from './_server-protocol.ts';

const log = debuglog('obd');
/**
 * `obd:attach:server` — one message per serving-child event:
 * `{ event: 'serving' | 'exit' | 'gave-up', pid, restarts, code?, signal?, ms? }`
 * (`ms`: for `serving` after a restart, the time from the death to serving again).
 */
const serverChannel = diagnostics.channel('obd:attach:server');

/** How to start a serving child: it gets the `/dev/fuse` fd as fd 3 and an IPC channel. */
export interface ServerCommand {
  command: string;
  args: readonly string[];
  env?: NodeJS.ProcessEnv;
}

/** Options of {@link superviseFuse}. */
export interface SuperviseFuseOptions {
  /** An existing empty directory to mount on. */
  mountpoint: string;
  server: ServerCommand;
  /** What the child opens (its `open` message; a device config for obd). Must survive JSON. */
  device: unknown;
  /** Name of the file in the mount. Default `block`. */
  name?: string;
  /** Reader threads per child. Default 4. */
  workers?: number;
  debug?: boolean;
  /** Keep a loaded spare child, so a restart does not wait for a process to start. Default true. */
  spare?: boolean;
  /**
   * Wait this long after the first child starts serving before loading the spare, so its
   * start-up does not compete with the first reads (a container starting). After a restart
   * the spare is loaded at once. Default 3000 ms.
   */
  spareDelayMs?: number;
  /** Limit for a child to load, open the device and answer INIT. Default 120 s. */
  startTimeoutMs?: number;
  /** Consecutive children that fail to take over before giving up. Default 5. */
  maxFailures?: number;
  /** A child dying this soon after it started serving counts as a failure. Default 500 ms. */
  quickDeathMs?: number;
  /** Called whenever a child starts serving (the first one and every restart). */
  onServer?: (info: { pid: number; restarts: number }) => void;
  /**
   * A serving child started ahead of need ({@link prepareServer}) with the same `server`
   * command: it becomes the first child, its `/dev/fuse` the connection. Taken over in
   * any case: closed when it does not match or has died (a fresh child starts then).
   */
  prepared?: PreparedServer;
}

/** A supervised, mounted FUSE connection. */
export interface SupervisedFuse {
  /** Path of the file inside the mount (give this to losetup). */
  readonly path: string;
  readonly mountpoint: string;
  /** Kernel connection id. */
  readonly connection: number;
  readonly size: number;
  readonly readOnly: boolean;
  /** What the kernel and the first child agreed in INIT. */
  readonly init: InitOut;
  /** pid of the serving child; -1 while a restart is in progress. */
  readonly serverPid: number;
  /** Children started after the first one. */
  readonly restarts: number;
  /** Resolves when the connection is over: unmounted (here or from outside), aborted, or given up. Never rejects. */
  readonly closed: Promise<void>;
  /**
   * Stops supervising, unmounts (lazily when busy), waits for the child to leave and
   * aborts the connection if that takes longer than `abortAfterMs` (default 5000); no
   * child stays running, the fd is closed.
   */
  unmount(options?: { abortAfterMs?: number }): Promise<void>;
}


const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms).unref());

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One serving child and its message queue. */
class ServerProcess {
  readonly child: ChildProcess;
  readonly exited: Promise<Exit>;
  readonly #received: ServerMessage[] = [];
  #notify: () => void = () => {};
  #tail = '';
  #exit: Exit | undefined;

  constructor(server: ServerCommand, fd: number) {
    this.child = spawn(server.command, [...server.args], {
      stdio: ['ignore', 'ignore', 'pipe', fd, 'ipc'],
      // Its own process group: a Ctrl-C meant for the supervisor must not kill it.
      detached: true,
      ...(server.env !== undefined ? { env: server.env } : {}),
    });
    this.exited = new Promise((resolve) => {
      const done = (exit: Exit): void => {
        if (this.#exit !== undefined) return;
        this.#exit = exit;
        this.#notify();
        resolve(exit);
      };
      this.child.once('exit', (code, signal) => done({ code, signal }));
      this.child.once('error', (e) => {
        this.#tail += e.message;
        done({ code: null, signal: null });
      });
    });
    this.child.on('message', (m: ServerMessage) => {
      this.#received.push(m);
      this.#notify();
    });
    this.child.stderr?.on('data', (d: Buffer) => {
      const text = d.toString();
      log('fuse server %d: %s', this.pid, text.trimEnd());
      this.#tail = (this.#tail + text).slice(-2000);
    });
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.#exit === undefined;
  }

  send(m: SupervisorMessage): void {
    if (!this.child.connected) return;
    this.child.send(m, (e) => {
      if (e !== null) log('fuse supervisor: cannot message server %d: %s', this.pid, e.message);
    });
  }

  /** The next message of type `t` (earlier ones of other types are dropped); rejects when the child fails or exits first, or on timeout. */
  async expect<T extends ServerMessage['t']>(t: T, timeoutMs: number): Promise<Extract<ServerMessage, { t: T }>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.#received.shift();
      if (m !== undefined) {
        if (m.t === t) return m as Extract<ServerMessage, { t: T }>;
        if (m.t === 'failed') throw new (errorClassOf(m.code) ?? FailedPreconditionError)(m.message);
        continue;
      }
      if (this.#exit !== undefined) {
        const how = this.#exit.signal !== null ? `was killed by ${this.#exit.signal}` : `exited ${this.#exit.code}`;
        const tail = this.#tail.trim();
        throw new FailedPreconditionError(`Cannot serve FUSE: the serving process ${how}${tail !== '' ? `: ${tail.split('\n').slice(-3).join(' ')}` : ''}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new UnavailableError(`Cannot serve FUSE: the serving process sent no '${t}' within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#notify = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#notify = () => {};
    }
  }

  kill(): void {
    if (this.alive) this.child.kill('SIGKILL');
  }

  /** Asks an idle child (a spare) to leave; kills it if it does not within `ms`. */
  async dismiss(ms: number): Promise<void> {
    this.send({ t: 'stop' });
    if (await Promise.race([this.exited.then(() => true), sleep(ms).then(() => false)])) return;
    this.kill();
    await this.exited;
  }
}

class Supervisor implements SupervisedFuse {
  readonly path: string;
  readonly closed: Promise<void>;
  readonly #fuse: FuseMountpoint;
  readonly #options: SuperviseFuseOptions;
  readonly #startTimeoutMs: number;
  readonly #children = new Set<ServerProcess>();
  #resolveClosed: () => void = () => {};
  #file: FuseFileConfig | undefined;
  #init: InitOut | undefined;
  #active: ServerProcess | undefined;
  #spare: ServerProcess | undefined;
  #restarts = 0;
  #failures = 0;
  #stopping = false;
  #ended = false;
  #spareTimer: NodeJS.Timeout | undefined;
  #unmounting: Promise<void> | undefined;

  constructor(fuse: FuseMountpoint, options: SuperviseFuseOptions) {
    this.#fuse = fuse;
    this.#options = options;
    this.#startTimeoutMs = options.startTimeoutMs ?? 120_000;
    this.path = join(fuse.mountpoint, options.name ?? 'block');
    this.closed = new Promise((resolve) => (this.#resolveClosed = resolve));
  }

  get mountpoint(): string {
    return this.#fuse.mountpoint;
  }

  get connection(): number {
    return this.#fuse.connection;
  }

  get size(): number {
    return (this.#file as FuseFileConfig).size;
  }

  get readOnly(): boolean {
    return (this.#file as FuseFileConfig).readOnly;
  }

  get init(): InitOut {
    return this.#init as InitOut;
  }

  get serverPid(): number {
    return this.#active?.pid ?? -1;
  }

  get restarts(): number {
    return this.#restarts;
  }

  #spawn(): ServerProcess {
    return this.#adopt(new ServerProcess(this.#options.server, this.#fuse.fd));
  }

  #adopt(p: ServerProcess): ServerProcess {
    this.#children.add(p);
    void p.exited.then(() => {
      this.#children.delete(p);
      // A spare that died idle is replaced at the next hand-over (a fresh child then).
      if (this.#spare === p) this.#spare = undefined;
    });
    return p;
  }

  /** First child (`prepared`, else a new one): open, mount, serve, INIT. On failure nothing stays running or mounted. */
  async start(prepared?: ServerProcess): Promise<void> {
    let mounted = false;
    const first = prepared !== undefined ? this.#adopt(prepared) : this.#spawn();
    try {
      await first.expect('hello', this.#startTimeoutMs);
      first.send({ t: 'open', device: this.#options.device });
      const opened = await first.expect('opened', this.#startTimeoutMs);
      this.#file = fuseFileConfig(opened, this.#options.name !== undefined ? { name: this.#options.name } : {});
      await this.#fuse.mount({ readOnly: opened.readOnly });
      mounted = true;
      first.send({ t: 'serve', file: this.#file, resend: false, workers: this.#options.workers ?? 4, debug: this.#options.debug ?? false });
      await first.expect('serving', this.#startTimeoutMs);
      this.#init = (await first.expect('init', this.#startTimeoutMs)).init;
    } catch (e) {
      for (const c of this.#children) c.kill();
      if (mounted) {
        await this.#fuse.abort();
        await this.#fuse.unmount();
      }
      await Promise.all([...this.#children].map((c) => c.exited));
      this.#fuse.close();
      throw e;
    }
    this.#activate(first, undefined);
  }

  #activate(child: ServerProcess, diedAt: number | undefined): void {
    this.#active = child;
    const servingSince = Date.now();
    const info = { pid: child.pid, restarts: this.#restarts };
    if (serverChannel.hasSubscribers) {
      serverChannel.publish({ event: 'serving', ...info, ...(diedAt !== undefined ? { ms: servingSince - diedAt } : {}) });
    }
    this.#options.onServer?.(info);
    void child.exited.then((exit) => this.#onExit(child, exit, servingSince));
    if (this.#options.spare === false) return;
    const delay = diedAt === undefined ? (this.#options.spareDelayMs ?? 3000) : 0;
    clearTimeout(this.#spareTimer);
    this.#spareTimer = setTimeout(() => {
      this.#spareTimer = undefined;
      if (!this.#stopping && !this.#ended && this.#spare === undefined) this.#spare = this.#spawn();
    }, delay);
    this.#spareTimer.unref();
  }

  #onExit(child: ServerProcess, exit: Exit, servingSince: number): void {
    if (this.#active !== child) return;
    this.#active = undefined;
    const diedAt = Date.now();
    if (serverChannel.hasSubscribers) serverChannel.publish({ event: 'exit', pid: child.pid, restarts: this.#restarts, ...exit });
    if (this.#stopping) return;
    if (exit.code === 0) {
      // The child saw ENODEV: the connection was unmounted or aborted from outside.
      log('fuse supervisor: connection %d ended', this.connection);
      this.#end();
      return;
    }
    log('fuse supervisor: server %d died (%s); restarting', child.pid, exit.signal ?? `exit ${exit.code}`);
    this.#failures = diedAt - servingSince < (this.#options.quickDeathMs ?? 500) ? this.#failures + 1 : 0;
    void this.#restart(diedAt);
  }

  async #restart(diedAt: number): Promise<void> {
    const maxFailures = this.#options.maxFailures ?? 5;
    while (!this.#stopping) {
      if (this.#failures >= maxFailures) {
        log('fuse supervisor: giving up after %d failed restarts; aborting connection %d', this.#failures, this.connection);
        if (serverChannel.hasSubscribers) serverChannel.publish({ event: 'gave-up', pid: -1, restarts: this.#restarts });
        await this.#fuse.abort();
        this.#end();
        return;
      }
      if (this.#failures > 0) await sleep(Math.min(2000, 50 * 2 ** this.#failures));
      if (this.#stopping) return;
      const spare = this.#spare;
      this.#spare = undefined;
      const child = spare?.alive === true ? spare : this.#spawn();
      try {
        this.#restarts++;
        await child.expect('hello', this.#startTimeoutMs);
        const loaded = Date.now();
        child.send({ t: 'open', device: this.#options.device });
        const opened = await child.expect('opened', this.#startTimeoutMs);
        const openedAt = Date.now();
        const file = this.#file as FuseFileConfig;
        if (opened.size !== file.size || opened.readOnly !== file.readOnly) {
          throw new FailedPreconditionError(`Cannot restart the FUSE server: the device changed (${opened.size} bytes, was ${file.size})`);
        }
        child.send({ t: 'serve', file, initialized: this.#init as InitOut, resend: true, workers: this.#options.workers ?? 4, debug: this.#options.debug ?? false });
        await child.expect('serving', this.#startTimeoutMs);
        log(
          'fuse supervisor: server %d took over after %d ms (%s child; loaded +%d ms, opened +%d ms, serving +%d ms)',
          child.pid,
          Date.now() - diedAt,
          child === spare ? 'spare' : 'new',
          loaded - diedAt,
          openedAt - loaded,
          Date.now() - openedAt,
        );
      } catch (e) {
        log('fuse supervisor: restart failed: %s', (e as Error).message);
        child.kill();
        this.#failures++;
        continue;
      }
      if (this.#stopping) {
        // unmount() started meanwhile: the child leaves with ENODEV like any other.
        this.#active = child;
        return;
      }
      this.#activate(child, diedAt);
      return;
    }
  }

  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    void (async () => {
      if (await this.#fuse.isMounted()) await this.#fuse.unmount();
      await this.#stopChildren(2000);
      this.#fuse.close();
      this.#resolveClosed();
    })();
  }

  /** Waits up to `ms` for every child to leave, dismisses the spare, kills the rest. */
  async #stopChildren(ms: number): Promise<void> {
    clearTimeout(this.#spareTimer);
    const spare = this.#spare;
    this.#spare = undefined;
    await spare?.dismiss(1000);
    const all = [...this.#children];
    const left = await Promise.race([Promise.all(all.map((c) => c.exited)).then(() => false), sleep(ms).then(() => true)]);
    if (left) for (const c of this.#children) c.kill();
    await Promise.all(all.map((c) => c.exited));
  }

  unmount(options: { abortAfterMs?: number } = {}): Promise<void> {
    this.#unmounting ??= this.#unmount(options.abortAfterMs ?? 5000);
    return this.#unmounting;
  }

  async #unmount(abortAfterMs: number): Promise<void> {
    this.#stopping = true;
    if (!this.#ended) {
      this.#ended = true;
      await this.#fuse.unmount();
      // Only the serving child leaves by itself (ENODEV); a spare or a child still starting would wait.
      const spare = this.#spare;
      this.#spare = undefined;
      await spare?.dismiss(1000);
      for (const c of this.#children) if (c !== this.#active) c.kill();
      const all = [...this.#children];
      const gone = (ms: number): Promise<boolean> =>
        Promise.race([Promise.all(all.map((c) => c.exited)).then(() => true), sleep(ms).then(() => false)]);
      if (!(await gone(abortAfterMs))) {
        log('fuse supervisor: %s still has users after %d ms; aborting connection %d', this.mountpoint, abortAfterMs, this.connection);
        await this.#fuse.abort();
        if (!(await gone(5000))) for (const c of all) c.kill();
      }
      await Promise.all(all.map((c) => c.exited));
      this.#fuse.close();
      this.#resolveClosed();
    }
    await this.closed;
  }
}

/**
 * Opens `/dev/fuse`, starts a serving child, mounts, and resolves once the kernel's
 * INIT is answered; from then on keeps a child serving until {@link SupervisedFuse.unmount}.
 * Rejects with the child's error when it cannot open the device (the error class
 * follows its code), `FailedPreconditionError` when the mount fails; nothing is left
 * running, open or mounted then.
 */
export async function superviseFuse(options: SuperviseFuseOptions): Promise<SupervisedFuse> {
  const taken = options.prepared?.take(options.server);
  let fuse: FuseMountpoint;
  try {
    fuse = await openFuse(options.mountpoint, taken !== undefined ? { fd: taken.fd } : {});
  } catch (e) {
    if (taken !== undefined) {
      taken.child.kill();
      closeSync(taken.fd);
    }
    throw e;
  }
  const supervisor = new Supervisor(fuse, options);
  await supervisor.start(taken?.child);
  return supervisor;
}

/**
 * A serving child started before its device is known: `/dev/fuse` opened (no mountpoint
 * yet) and `obd serve-fuse` loaded, waiting for the `open` message of the supervisor
 * that takes it ({@link SuperviseFuseOptions.prepared}). What an attach on a container's
 * start path then saves is a process start and the reader threads' boot (the child
 * parks them while it waits), about 0.3–0.9 s on a small machine.
 *
 * @example
 * ```ts
 * const prepared = prepareServer(server);   // ahead of need
 * // … later, once the device config is known:
 * const fuse = await superviseFuse({ mountpoint, server, device, prepared });
 * ```
 */
export class PreparedServer {
  readonly server: ServerCommand;
  #fd: number | undefined;
  #child: ServerProcess | undefined;

  private constructor(server: ServerCommand) {
    this.server = server;
    const fd = openFuseDevice();
    try {
      this.#child = new ServerProcess(server, fd);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    this.#fd = fd;
    // Waiting must not keep the starter alive.
    this.#child.child.unref();
    (this.#child.child.channel as { unref?: () => void } | null | undefined)?.unref?.();
  }

  /** pid of the waiting child; -1 once taken or closed. */
  get pid(): number {
    return this.#child?.pid ?? -1;
  }

  /** Opens `/dev/fuse` and starts the child `server`. */
  static start(server: ServerCommand): PreparedServer {
    return new PreparedServer(server);
  }

  /** Hands over the fd and the child when they serve `server` and the child lives; otherwise closes them. Once. */
  take(server: ServerCommand): { fd: number; child: ServerProcess } | undefined {
    const fd = this.#fd;
    const child = this.#child;
    if (fd === undefined || child === undefined || !child.alive || !sameCommand(server, this.server)) {
      this.close();
      return undefined;
    }
    this.#fd = undefined;
    this.#child = undefined;
    child.child.ref();
    (child.child.channel as { ref?: () => void } | null | undefined)?.ref?.();
    return { fd, child };
  }

  /** Ends the child and closes the fd unless taken. */
  close(): void {
    if (this.#child === undefined || this.#fd === undefined) return;
    this.#child.kill();
    closeSync(this.#fd);
    this.#child = undefined;
    this.#fd = undefined;
  }
}

function sameCommand(a: ServerCommand, b: ServerCommand): boolean {
  return a.command === b.command && a.args.length === b.args.length && a.args.every((x, i) => x === b.args[i]) && JSON.stringify(a.env ?? null) === JSON.stringify(b.env ?? null);
}
