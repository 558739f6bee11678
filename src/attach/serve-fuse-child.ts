/**
 * The serving side of a supervised FUSE attachment: runs in a child process started by
 * {@link superviseFuse} with the connection's `/dev/fuse` fd as fd 3 and a node IPC
 * channel (`_server-protocol.ts`). It opens the device the supervisor names, serves it
 * on the inherited fd (no mount, and no INIT when it takes over a connection), and
 * exits when the connection ends. It never spawns anything: a fork from a process with
 * a large hot heap makes its later writes slow (src/fuse/README.md).
 *
 * If the supervisor goes away while this process serves, it keeps serving until the
 * connection ends (the mount stays usable and can be unmounted by hand).
 *
 * @example
 * ```ts
 * // the entry of the serving child (obd serve-fuse)
 * process.exitCode = await runFuseServerChild({ open: (cfg) => openDevice(cfg as DeviceConfig) });
 * ```
 */
import { fstatSync } from 'node:fs';
import { debuglog } from 'node:util';
import type { BlockDevice } from '../io/block-device.ts';
import { FailedPreconditionError } from '../io/errors.ts';
import { prepareFuseReaders, releaseParkedReaders, serveFuseFd } from '../fuse/serve-fuse-fd.ts';
import type { FuseLocalReads, FuseService } from '../fuse/serve-fuse-fd.ts';
import { CHILD_FUSE_FD } from './_server-protocol.ts';
import type { ServerMessage, SupervisorMessage } from './_server-protocol.ts';

const log = debuglog('obd');

/** Options of {@link runFuseServerChild}. */
export interface FuseServerChildOptions {
  /** Opens the device the supervisor describes (its `open` message; a device config for obd). */
  open(device: unknown): Promise<BlockDevice>;
  /** The inherited `/dev/fuse` fd. Default 3. */
  fd?: number;
  /** For a read-only device: the module reader threads open their own copies with (`localReadsFor`). */
  localReads?(device: unknown): Promise<FuseLocalReads | undefined>;
  /** Local-reads modules to prepare while waiting (`READ_DEVICE_MODULE`), so a takeover is quick. */
  prepare?: readonly string[];
  /**
   * Reader threads to start while waiting for the supervisor (`prepareFuseReaders`), so
   * that serving does not wait for threads to boot; those the `serve` message does not
   * use end once serving. Default 0.
   */
  parkedReaders?: number;
  /** Called once the child said hello, while it waits for `open` (e.g. load the HTTP client). */
  warm?: () => void;
}

function errorFields(e: unknown): { code: string; message: string } {
  const err = e as { code?: unknown; message?: unknown };
  return { code: typeof err.code === 'string' ? err.code : 'ERR_UNKNOWN', message: typeof err.message === 'string' ? err.message : String(e) };
}

/**
 * Serves for the supervisor on the other end of this process's IPC channel; resolves
 * with the exit code: 0 when the connection is over (or the supervisor said stop), 1 on
 * failure (the supervisor then starts another server).
 */
export async function runFuseServerChild(options: FuseServerChildOptions): Promise<number> {
  if (process.send === undefined) {
    throw new FailedPreconditionError('Cannot serve FUSE for a supervisor: no IPC channel (obd attach starts this process)');
  }
  const fd = options.fd ?? CHILD_FUSE_FD;
  let isFuse = false;
  try {
    isFuse = fstatSync(fd).isCharacterDevice();
  } catch {
    // not open
  }
  if (!isFuse) throw new FailedPreconditionError(`Cannot serve FUSE for a supervisor: fd ${fd} is not /dev/fuse`);

  const post = (m: ServerMessage): Promise<void> =>
    new Promise((resolve) => {
      if (process.connected !== true || process.send === undefined) return resolve();
      process.send(m, undefined, {}, () => resolve());
    });

  return new Promise<number>((resolve) => {
    let device: BlockDevice | undefined;
    let localReads: FuseLocalReads | undefined;
    let service: FuseService | undefined;
    let finished = false;
    const finish = async (code: number): Promise<void> => {
      if (finished) return;
      finished = true;
      process.off('message', onMessage);
      process.off('disconnect', onDisconnect);
      await device?.close().catch((e: Error) => log('fuse child: cannot close the device: %s', e.message));
      if (process.connected) process.disconnect();
      resolve(code);
    };
    const fail = async (e: unknown): Promise<void> => {
      log('fuse child: %s', errorFields(e).message);
      await post({ t: 'failed', ...errorFields(e) });
      await finish(1);
    };
    const open = async (spec: unknown): Promise<void> => {
      device = await options.open(spec);
      if (device.readOnly) localReads = await options.localReads?.(spec);
      await post({ t: 'opened', size: device.size, readOnly: device.readOnly });
    };
    const serve = async (m: Extract<SupervisorMessage, { t: 'serve' }>): Promise<void> => {
      if (device === undefined) throw new FailedPreconditionError('Cannot serve FUSE: the supervisor asked to serve before opening a device');
      const running = await serveFuseFd(device, {
        fd,
        config: m.file,
        workers: m.workers,
        debug: m.debug,
        resend: m.resend,
        ...(m.initialized !== undefined ? { initialized: m.initialized } : {}),
        ...(localReads !== undefined ? { localReads } : {}),
      });
      service = running;
      // 'serving' once the readers really read: a death after it is the server's own.
      await running.ready;
      await releaseParkedReaders();
      await post({ t: 'serving' });
      if (m.initialized === undefined) {
        void running.initialized.then((init) => (init !== undefined ? post({ t: 'init', init }) : undefined));
      }
      const end = await running.done;
      log('fuse child: readers ended (%s)', end);
      await finish(end === 'unmounted' ? 0 : 1);
    };
    const onMessage = (raw: unknown): void => {
      const m = raw as SupervisorMessage;
      if (m.t === 'open') open(m.device).catch(fail);
      else if (m.t === 'serve') serve(m).catch(fail);
      else if (m.t === 'stop' && service === undefined) void finish(0);
    };
    // Without the supervisor nobody would start the readers; once serving, keep going.
    const onDisconnect = (): void => {
      if (service === undefined) void finish(1);
      else log('fuse child: the supervisor is gone; serving until the connection ends');
    };
    process.on('message', onMessage);
    process.on('disconnect', onDisconnect);
    prepareFuseReaders(options.prepare, { parked: options.parkedReaders ?? 0 })
      .catch((e: Error) => log('fuse child: cannot prepare the readers: %s', e.message))
      .then(() => post({ t: 'hello' }))
      .then(() => {
        try {
          options.warm?.();
        } catch (e) {
          log('fuse child: warming up failed: %s', (e as Error).message);
        }
      })
      .catch(fail);
  });
}
