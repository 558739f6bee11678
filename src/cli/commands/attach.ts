/**
 * `obd attach`: serve a device through FUSE + loop (and optionally mount it) until
 * SIGTERM/SIGINT, then tear down. With `--background` it starts itself as a detached
 * process, waits until the device is ready (or failed) and returns; `obd mount` is
 * that form with a mount point.
 *
 * With the FUSE frontend this process is only the supervisor: it owns the FUSE
 * connection, the loop device and the mount, and the device is served by a child
 * (`obd serve-fuse`) that is restarted at once whenever it dies; I/O in flight pauses
 * and completes (src/attach/fuse-supervisor.ts). `--frontend nbd` and `--nbd-listen`
 * serve in this process.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { extname } from 'node:path';
import type { Command } from '../command.ts';
import type { CliIo } from '../io.ts';
import { parse, flag, str, type Parsed } from '../args.ts';
import { REMOTE_OPTIONS, plainHttpHosts, remoteAccess } from '../remote-options.ts';
import { FailedPreconditionError, InvalidArgumentError, UnavailableError } from '../../io/errors.ts';
import { targetDeviceConfig } from '../../device/open-target.ts';
import { openDevice } from '../../device/open-device.ts';
import { withWritableUpper } from '../../device/writable-upper.ts';
import { writeResultFile } from '../../device/result-file.ts';
import { startSession, startSupervisedSession, DEFAULT_RUN_DIR, type Session } from '../../attach/session.ts';
import { PreparedServer, type ServerCommand } from '../../attach/fuse-supervisor.ts';
import type { DeviceConfig } from '../../image/device-config.ts';
import { createNbdServer } from '../../nbd/nbd-server.ts';
import { nbdUri } from '../../nbd/nbd-uri.ts';
import type { BlockDevice } from '../../io/block-device.ts';
import { downloadSettings, replayReaderSettings } from '../../device/trace-prefetcher.ts';
import { childExecArgv } from '../../attach/node-exec-argv.ts';

export const ATTACH_OPTIONS = {
  ...REMOTE_OPTIONS,
  mount: { type: 'string' },
  fstype: { type: 'string' },
  rw: { type: 'boolean' },
  upper: { type: 'string' },
  mkfs: { type: 'boolean' },
  background: { type: 'boolean' },
  'run-dir': { type: 'string' },
  'ready-fd': { type: 'string' },
  workers: { type: 'string' },
  frontend: { type: 'string' },
  'nbd-listen': { type: 'string' },
} as const;

const usage =
  'obd attach CONFIG|IMAGE [--mount DIR] [--fstype ext4] [--rw] [--upper DIR] [--mkfs] [--background] [--frontend fuse|nbd]\n' +
  '       obd attach CONFIG|IMAGE --nbd-listen unix:PATH|HOST:PORT   (serve NBD only, for hosts with nbd.ko or qemu)';

const READY_TIMEOUT_MS = 120_000;
/** The internal first argument of a standby attach process (see {@link StandbyAttach}). */
const STANDBY_FLAG = '--standby';

function spawnAttach(args: string[], stdin: 'ignore' | 'pipe'): ChildProcess {
  const self = fileURLToPath(import.meta.url);
  const bin = fileURLToPath(new URL(`../bin/obd${extname(self)}`, import.meta.url));
  return spawn(process.execPath, [...childExecArgv(), bin, 'attach', ...args, '--ready-fd', '3'], {
    detached: true,
    stdio: [stdin, 'ignore', 'ignore', 'pipe'],
  });
}

/** Starts `obd attach ARGS --ready-fd 3` detached and waits for its first status line. */
async function runInBackground(argv: string[], io: CliIo): Promise<void> {
  await awaitReady(spawnAttach(argv.filter((a) => a !== '--background'), 'ignore'), io);
}

/**
 * A detached `obd attach` process started ahead of need: node started and the command's
 * modules loaded, it waits on its stdin for the arguments of one attach. `run(argv)`
 * hands them over and waits for the device as `obd attach ARGV --background` does
 * (saving a process start on the attach path); closing it unused ends the process.
 */
export class StandbyAttach {
  readonly #child: ChildProcess;
  #used = false;

  private constructor(child: ChildProcess) {
    this.#child = child;
    child.on('error', () => undefined);
    child.stdin?.on('error', () => undefined);
    // The standby must not keep its starter alive.
    child.unref();
    (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    (child.stdio[3] as unknown as { unref?: () => void } | null)?.unref?.();
  }

  /** Starts a standby process. */
  static start(): StandbyAttach {
    return new StandbyAttach(spawnAttach([STANDBY_FLAG], 'pipe'));
  }

  /** Whether `run` can still be called (not used, process alive). */
  get usable(): boolean {
    return !this.#used && this.#child.exitCode === null && this.#child.signalCode === null && this.#child.stdin?.writable === true;
  }

  /** Attaches with `argv` (the arguments of `obd attach`, without `--background`). */
  async run(argv: string[], io: CliIo): Promise<void> {
    if (!this.usable) throw new FailedPreconditionError('Cannot attach through the standby process: it was used or has exited');
    this.#used = true;
    (this.#child.stdio[3] as unknown as { ref?: () => void } | null)?.ref?.();
    this.#child.stdin?.end(`${JSON.stringify(argv)}\n`);
    await awaitReady(this.#child, io);
  }

  /** Ends the process if it was not used. */
  close(): void {
    if (this.#used) return;
    this.#used = true;
    this.#child.stdin?.destroy();
    (this.#child.stdio[3] as unknown as { destroy?: () => void } | null)?.destroy?.();
  }
}

/** Waits for the first status line of a started attach process on its fd 3. */
async function awaitReady(child: ChildProcess, io: CliIo): Promise<void> {
  const pipe = child.stdio[3] as NodeJS.ReadableStream;
  const line = await new Promise<string>((resolve, reject) => {
    let text = '';
    const timer = setTimeout(() => reject(new UnavailableError('Cannot attach: the serving process did not report within 120 s')), READY_TIMEOUT_MS);
    pipe.on('data', (d: Buffer) => {
      text += d.toString();
      const nl = text.indexOf('\n');
      if (nl >= 0) {
        clearTimeout(timer);
        resolve(text.slice(0, nl));
      }
    });
    const exited = (code: number | null): void => {
      clearTimeout(timer);
      if (!text.includes('\n')) reject(new FailedPreconditionError(`Cannot attach: the serving process exited ${code} before it was ready`));
    };
    if (child.exitCode !== null || child.signalCode !== null) exited(child.exitCode);
    child.on('exit', exited);
  });
  (pipe as unknown as { destroy(): void }).destroy();
  child.unref();
  if (line.startsWith('error ')) {
    const { code, message } = JSON.parse(line.slice(6)) as { code: string; message: string };
    throw code === 'ERR_INVALID_ARGUMENT' ? new InvalidArgumentError(message) : new FailedPreconditionError(message);
  }
  const record = JSON.parse(line.slice(6)) as { blockDevice: string; mountpoint?: string; pid: number };
  io.out(`${record.blockDevice}${record.mountpoint ? ` mounted on ${record.mountpoint}` : ''} (served by process ${record.pid})\n`);
}

/** The command that starts a serving child: this CLI's `serve-fuse` with the registry and cache flags. */
function serverCommand(p: Parsed): ServerCommand {
  const self = fileURLToPath(import.meta.url);
  const bin = fileURLToPath(new URL(`../bin/obd${extname(self)}`, import.meta.url));
  const args: string[] = [];
  for (const name of Object.keys(REMOTE_OPTIONS)) {
    const v = p.values[name];
    for (const one of Array.isArray(v) ? v : [v]) {
      if (typeof one === 'string') args.push(`--${name}`, one);
      else if (one === true) args.push(`--${name}`);
    }
  }
  return { command: process.execPath, args: [...childExecArgv(), bin, 'serve-fuse', ...args] };
}

/** Resolves on SIGTERM/SIGINT (from the call on, also during a slow start) or when `closed` resolves. */
function stopSignal(): { wait(closed: Promise<void>): Promise<void>; requested(): boolean; dispose(): void } {
  let requested = false;
  let wake: () => void = () => {};
  const onSignal = (): void => {
    requested = true;
    wake();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return {
    wait: (closed) =>
      new Promise<void>((resolve) => {
        if (requested) return resolve();
        wake = resolve;
        void closed.then(resolve);
      }),
    requested: () => requested,
    dispose() {
      process.off('SIGTERM', onSignal);
      process.off('SIGINT', onSignal);
    },
  };
}

/** `prepared`: a serving child started ahead of need (standby); taken over or closed here. */
async function serve(p: Parsed, io: CliIo, prepared?: PreparedServer): Promise<void> {
  const target = p.positionals[0] as string;
  const readyFd = str(p, 'ready-fd');
  const ready = readyFd === undefined ? undefined : createWriteStream('', { fd: Number(readyFd) });
  const report = (line: string): void => {
    ready?.end(`${line}\n`);
  };
  const access = remoteAccess(p);
  const signal = stopSignal();
  let resultFile = '';
  try {
    let cfg = await targetDeviceConfig(target, { access, plainHttp: plainHttpHosts(p) });
    resultFile = cfg.resultFile;
    const upperDir = str(p, 'upper');
    if (upperDir !== undefined) cfg = await withWritableUpper(cfg, upperDir);
    const writable = flag(p, 'rw');
    if (writable && cfg.upper === undefined) throw new InvalidArgumentError(`Cannot attach ${target} read-write: give --upper DIR or a config with an upper layer`);
    const listen = str(p, 'nbd-listen');
    const frontend = str(p, 'frontend') ?? 'fuse';
    if (frontend !== 'fuse' && frontend !== 'nbd') throw new InvalidArgumentError(`Invalid --frontend '${frontend}': expected fuse or nbd`);
    const mountpoint = str(p, 'mount');
    const fsType = str(p, 'fstype');
    const workers = str(p, 'workers');
    const sessionOptions = {
      target,
      writable,
      mkfs: flag(p, 'mkfs'),
      runDir: str(p, 'run-dir') ?? DEFAULT_RUN_DIR,
      ...(mountpoint !== undefined ? { mountpoint } : {}),
      ...(fsType !== undefined ? { fsType } : {}),
      ...(workers !== undefined ? { workers: Number(workers) } : {}),
    };
    if (listen === undefined && frontend === 'fuse') {
      let session: Session;
      try {
        session = await startSupervisedSession({ ...sessionOptions, device: cfg, server: serverCommand(p), ...(prepared !== undefined ? { prepared } : {}) });
        await writeResultFile(resultFile);
      } catch (e) {
        await writeResultFile(resultFile, e).catch(() => {});
        throw e;
      }
      await runSession(session, { io, report, signal });
      return;
    }
    prepared?.close();
    await serveInProcess(cfg, { p, access, resultFile, listen, sessionOptions: { ...sessionOptions, frontend } }, { io, report, signal });
  } catch (e) {
    const err = e as { code?: string; message?: string };
    report(`error ${JSON.stringify({ code: err.code ?? 'ERR_UNKNOWN', message: err.message ?? String(e) })}`);
    throw e;
  } finally {
    prepared?.close();
    signal.dispose();
    await access.close();
  }
}

interface Out {
  io: CliIo;
  report: (line: string) => void;
  signal: ReturnType<typeof stopSignal>;
}

/** Reports the session, waits for a stop signal (or its end), tears it down. */
async function runSession(session: Session, out: Out): Promise<void> {
  out.io.out(`${session.record.blockDevice}\n`);
  out.report(`ready ${JSON.stringify(session.record)}`);
  await out.signal.wait(session.closed);
  await session.stop();
}

/** `--frontend nbd` and `--nbd-listen`: the device is opened and served in this process. */
async function serveInProcess(
  cfg: DeviceConfig,
  how: { p: Parsed; access: ReturnType<typeof remoteAccess>; resultFile: string; listen: string | undefined; sessionOptions: Parameters<typeof startSession>[1] },
  out: Out,
): Promise<void> {
  let device;
  try {
    device = await openDevice(cfg, { remote: how.access.opener(await downloadSettings(cfg), await replayReaderSettings(cfg)) });
    await writeResultFile(how.resultFile);
  } catch (e) {
    await writeResultFile(how.resultFile, e).catch(() => {});
    throw e;
  }
  try {
    if (how.listen !== undefined) {
      await serveNbdOnly(device, { listen: how.listen, name: how.sessionOptions.target }, out);
      return;
    }
    await runSession(await startSession(device, how.sessionOptions), out);
  } finally {
    await device.close();
  }
}

/** `--nbd-listen`: only the NBD server, until SIGTERM/SIGINT. */
async function serveNbdOnly(device: BlockDevice, where: { listen: string; name: string }, out: Out): Promise<void> {
  const server = createNbdServer({ device, name: 'obd' });
  try {
    const l = where.listen;
    const endpoint = l.startsWith('unix:')
      ? await server.listen({ path: l.slice(5) })
      : await server.listen({ host: l.slice(0, l.lastIndexOf(':')) || '127.0.0.1', port: Number(l.slice(l.lastIndexOf(':') + 1)) });
    const uri = nbdUri(endpoint, 'obd');
    out.io.out(`${uri}\n`);
    out.report(`ready ${JSON.stringify({ blockDevice: uri, pid: process.pid })}`);
    await out.signal.wait(new Promise<void>(() => {}));
  } finally {
    await server.close();
  }
}

/** `obd attach --standby --ready-fd N` (internal, {@link StandbyAttach}): one line of JSON argv on stdin, then attach. */
async function standby(rest: string[], io: CliIo): Promise<void> {
  // The serving child of a FUSE attach with these flags, started now: an attach with
  // other registry flags, or another frontend, closes it and starts its own.
  let prepared: PreparedServer | undefined;
  try {
    prepared = PreparedServer.start(serverCommand(parse(['(standby)', ...rest], { options: ATTACH_OPTIONS, usage, min: 1, max: 1 })));
  } catch {
    // No /dev/fuse, say: the attach itself reports it.
  }
  try {
    let text = '';
    for await (const chunk of io.stdin()) {
      text += Buffer.from(chunk).toString();
      if (text.includes('\n')) break;
    }
    process.stdin.destroy();
    const nl = text.indexOf('\n');
    if (nl < 0) return; // closed unused
    const argv: unknown = JSON.parse(text.slice(0, nl));
    if (!Array.isArray(argv) || argv.some((a) => typeof a !== 'string')) throw new InvalidArgumentError('Invalid standby attach request: expected a JSON array of strings');
    await serve(parse([...(argv as string[]), ...rest], { options: ATTACH_OPTIONS, usage, min: 1, max: 1 }), io, prepared);
  } finally {
    prepared?.close();
  }
}

export const attachCommand: Command = {
  name: 'attach',
  summary: 'serve a device as /dev/loopN (FUSE + loop) until stopped; --mount DIR mounts it',
  usage,
  async run(argv, io) {
    if (argv[0] === STANDBY_FLAG) return standby(argv.slice(1), io);
    const p = parse(argv, { options: ATTACH_OPTIONS, usage, min: 1, max: 1 });
    if (flag(p, 'background')) return runInBackground(argv, io);
    await serve(p, io);
  },
};
