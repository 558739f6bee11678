/**
 * The gRPC adapter: serves any {@link Snapshotter} as containerd's
 * `containerd.services.snapshots.v1.Snapshots` on a unix socket (mode 0600), so
 * containerd can use it as a proxy snapshotter:
 *
 * ```toml
 * [proxy_plugins.overlaybd]
 *   type = "snapshot"
 *   address = "/run/overlaybd-snapshotter/overlaybd.sock"
 * ```
 *
 * Each RPC is a thin translation; domain errors become gRPC status codes here and
 * nowhere else (containerd `errgrpc.ToGRPC`): NotFound → NOT_FOUND, AlreadyExists →
 * ALREADY_EXISTS, FailedPrecondition → FAILED_PRECONDITION, InvalidArgument →
 * INVALID_ARGUMENT, Unavailable → UNAVAILABLE, PermissionDenied → PERMISSION_DENIED,
 * Unsupported → UNIMPLEMENTED, anything else → UNKNOWN.
 *
 * @example
 * ```ts
 * const server = await startSnapshotterServer({ snapshotter, address: '/run/obd/obd.sock' });
 * // … containerd calls it …
 * await server.close();
 * ```
 */
import { chmod, lstat, mkdir, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { debuglog } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  UnavailableError,
  UnsupportedError,
} from '../io/errors.ts';
import type { Info, Snapshotter } from './snapshotter.ts';
import { fromWireInfo, snapshotsService, toWireInfo, toWireMount, warmCodecs, type WireInfo } from './_proto.ts';

const log = debuglog('obd');

/** Infos per ListSnapshotsResponse message. */
const LIST_BATCH = 100;

/** Maps a thrown value to a gRPC status error (the only place this happens). */
export function toGrpcError(e: unknown): Partial<grpc.StatusObject> {
  const details = e instanceof Error ? e.message : String(e);
  let code = grpc.status.UNKNOWN;
  if (e instanceof NotFoundError) code = grpc.status.NOT_FOUND;
  else if (e instanceof AlreadyExistsError) code = grpc.status.ALREADY_EXISTS;
  else if (e instanceof FailedPreconditionError) code = grpc.status.FAILED_PRECONDITION;
  else if (e instanceof InvalidArgumentError) code = grpc.status.INVALID_ARGUMENT;
  else if (e instanceof UnavailableError) code = grpc.status.UNAVAILABLE;
  else if (e instanceof PermissionDeniedError) code = grpc.status.PERMISSION_DENIED;
  else if (e instanceof UnsupportedError) code = grpc.status.UNIMPLEMENTED;
  return { code, details };
}

/** Observes each finished RPC (metrics). */
export type RpcObserver = (rpc: string, seconds: number, failed: boolean) => void;

type Unary<Req, Res> = (req: Req) => Promise<Res>;

function unary<Req, Res>(name: string, fn: Unary<Req, Res>, observe?: RpcObserver): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const start = process.hrtime.bigint();
    const done = (failed: boolean): void => observe?.(name, Number(process.hrtime.bigint() - start) / 1e9, failed);
    fn(call.request).then(
      (res) => {
        done(false);
        callback(null, res);
      },
      (e: unknown) => {
        done(true);
        log('snapshotter rpc %s failed: %s', name, e instanceof Error ? e.message : String(e));
        callback(toGrpcError(e));
      },
    );
  };
}

interface KeyRequest {
  key: string;
}
interface CreateRequest {
  key: string;
  parent: string;
  labels: Record<string, string>;
}

/** The RPC handlers of `snapshotter`. */
export function snapshotsHandlers(sn: Snapshotter, observe?: RpcObserver): grpc.UntypedServiceImplementation {
  const mounts = async (p: Promise<Parameters<typeof toWireMount>[0][]>) => ({ mounts: (await p).map(toWireMount) });
  return {
    Prepare: unary('Prepare', (r: CreateRequest) => mounts(sn.prepare(r.key, r.parent, { labels: r.labels })), observe),
    View: unary('View', (r: CreateRequest) => mounts(sn.view(r.key, r.parent, { labels: r.labels })), observe),
    Mounts: unary('Mounts', (r: KeyRequest) => mounts(sn.mounts(r.key)), observe),
    Commit: unary('Commit', async (r: { name: string; key: string; labels: Record<string, string> }) => {
      await sn.commit(r.name, r.key, { labels: r.labels });
      return {};
    }, observe),
    Remove: unary('Remove', async (r: KeyRequest) => {
      await sn.remove(r.key);
      return {};
    }, observe),
    Stat: unary('Stat', async (r: KeyRequest) => ({ info: toWireInfo(await sn.stat(r.key)) }), observe),
    Update: unary('Update', async (r: { info: WireInfo | null; updateMask: { paths: string[] } | null }) => {
      if (r.info === null) throw new InvalidArgumentError('Cannot update a snapshot: no info given');
      return { info: toWireInfo(await sn.update(fromWireInfo(r.info), r.updateMask?.paths ?? [])) };
    }, observe),
    Usage: unary('Usage', (r: KeyRequest) => sn.usage(r.key), observe),
    Cleanup: unary('Cleanup', async () => {
      await sn.cleanup();
      return {};
    }, observe),
    List: (call: grpc.ServerWritableStream<{ filters: string[] }, { info: WireInfo[] }>) => {
      const start = process.hrtime.bigint();
      let cancelled = false;
      call.once('cancelled', () => {
        cancelled = true;
      });
      let batch: Info[] = [];
      // Backpressure: wait for 'drain' when grpc-js buffers; stop when the client goes away.
      const flush = async (): Promise<void> => {
        if (batch.length === 0 || cancelled) return;
        const ok = call.write({ info: batch.map(toWireInfo) });
        batch = [];
        if (!ok) {
          await new Promise<void>((resolve) => {
            const done = (): void => {
              call.off('drain', done);
              call.off('cancelled', done);
              resolve();
            };
            call.on('drain', done);
            call.on('cancelled', done);
          });
        }
      };
      sn.walk(async (info) => {
        if (cancelled) throw new UnavailableError('Cannot list snapshots: the client cancelled the call');
        batch.push(info);
        if (batch.length >= LIST_BATCH) await flush();
      }, call.request.filters).then(
        async () => {
          await flush();
          observe?.('Walk', Number(process.hrtime.bigint() - start) / 1e9, false);
          if (!cancelled) call.end();
        },
        (e: unknown) => {
          observe?.('Walk', Number(process.hrtime.bigint() - start) / 1e9, true);
          if (!cancelled) call.emit('error', toGrpcError(e));
        },
      );
    },
  };
}

/** A running server. */
export interface SnapshotterServer {
  /** The unix socket path. */
  readonly address: string;
  /** Stops accepting calls, lets running ones finish (up to `graceMs`, default 5 s), removes the socket. */
  close(options?: { graceMs?: number }): Promise<void>;
}

/** Options of {@link startSnapshotterServer}. */
export interface SnapshotterServerOptions {
  snapshotter: Snapshotter;
  /** Unix socket path; its parent directory is created (0700) and a stale socket replaced. */
  address: string;
  /** Called after every RPC (e.g. Prometheus metrics). */
  observe?: RpcObserver;
}

async function removeStaleSocket(address: string): Promise<void> {
  let st;
  try {
    st = await lstat(address);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!st.isSocket()) throw new AlreadyExistsError(`Cannot listen on ${address}: a file that is not a socket exists there`);
  await unlink(address);
}

/** Serves `snapshotter` over gRPC on the unix socket `address`. */
export async function startSnapshotterServer(options: SnapshotterServerOptions): Promise<SnapshotterServer> {
  const { address } = options;
  if (address === '') throw new InvalidArgumentError('Cannot start the snapshotter server: address is empty');
  await mkdir(dirname(address), { recursive: true, mode: 0o700 });
  await removeStaleSocket(address);
  const server = new grpc.Server();
  const service = snapshotsService().service;
  server.addService(service, snapshotsHandlers(options.snapshotter, options.observe));
  // The codecs are generated now, not during the first pull's Prepare and Commit calls.
  setImmediate(() => warmCodecs(service));
  await new Promise<void>((resolve, reject) => {
    server.bindAsync(`unix:${address}`, grpc.ServerCredentials.createInsecure(), (err) => (err === null ? resolve() : reject(err)));
  });
  try {
    await chmod(address, 0o600);
  } catch (e) {
    server.forceShutdown();
    throw e;
  }
  log('snapshotter: serving %s', address);
  let closed: Promise<void> | undefined;
  return {
    address,
    close({ graceMs = 5000 } = {}) {
      closed ??= (async () => {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, graceMs);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        await unlink(address).catch(() => undefined);
      })();
      return closed;
    },
  };
}
