/**
 * A {@link Snapshotter} that calls a snapshots gRPC service over a unix socket (ours or
 * any containerd proxy snapshotter), as containerd's `snapshots/proxy` does. gRPC status
 * codes become domain errors again (containerd `errgrpc.ToNative`), so the conformance
 * suite runs unchanged over the wire.
 *
 * @example
 * ```ts
 * const sn = createSnapshotterClient('/run/overlaybd-snapshotter/overlaybd.sock');
 * const names: string[] = [];
 * await sn.walk((info) => { names.push(info.name); });
 * await sn.close();
 * ```
 */
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
import type { Info, Mount, SnapshotOptions, Snapshotter, Usage, WalkFunction } from './snapshotter.ts';
import { fromWireInfo, fromWireMount, snapshotsService, toWireInfo, type WireInfo, type WireMount } from './_proto.ts';

/** Options of {@link createSnapshotterClient}. */
export interface SnapshotterClientOptions {
  /** Deadline of each call (default 60 s). */
  timeoutMs?: number;
  /**
   * The `snapshotter` field sent in requests: ignored by proxy snapshotters, selects the
   * snapshotter when talking to containerd's own snapshots service.
   */
  name?: string;
  /** gRPC metadata sent with every call, e.g. `{ 'containerd-namespace': 'default' }` for containerd. */
  metadata?: Record<string, string>;
}

function fromGrpcError(e: grpc.ServiceError): Error {
  const msg = e.details || e.message;
  switch (e.code) {
    case grpc.status.NOT_FOUND:
      return new NotFoundError(msg, { cause: e });
    case grpc.status.ALREADY_EXISTS:
      return new AlreadyExistsError(msg, { cause: e });
    case grpc.status.FAILED_PRECONDITION:
      return new FailedPreconditionError(msg, { cause: e });
    case grpc.status.INVALID_ARGUMENT:
      return new InvalidArgumentError(msg, { cause: e });
    case grpc.status.PERMISSION_DENIED:
      return new PermissionDeniedError(msg, { cause: e });
    case grpc.status.UNIMPLEMENTED:
      return new UnsupportedError(msg, { cause: e });
    case grpc.status.UNAVAILABLE:
    case grpc.status.DEADLINE_EXCEEDED:
      return new UnavailableError(msg, { cause: e });
    default:
      return new Error(msg, { cause: e });
  }
}

/** A generated unary method: (request, metadata, options, callback). */
type UnaryMethod = (...args: [unknown, grpc.Metadata, grpc.CallOptions, (e: grpc.ServiceError | null, res: unknown) => void]) => void;

/** Connects to the snapshots service at unix socket `address` (lazily, on the first call). */
export function createSnapshotterClient(address: string, options: SnapshotterClientOptions = {}): Snapshotter {
  const Client = snapshotsService();
  const client = new Client(`unix:${address}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & Record<string, UnaryMethod>;
  const timeoutMs = options.timeoutMs ?? 60_000;
  const snapshotter = options.name ?? '';
  const metadata = new grpc.Metadata();
  for (const [k, v] of Object.entries(options.metadata ?? {})) metadata.set(k, v);
  const call = <T>(method: string, req: Record<string, unknown>): Promise<T> =>
    new Promise((resolve, reject) => {
      const fn = client[method] as UnaryMethod;
      fn.call(client, { snapshotter, ...req }, metadata, { deadline: Date.now() + timeoutMs }, (e, res) => (e ? reject(fromGrpcError(e)) : resolve(res as T)));
    });
  const mounts = async (p: Promise<{ mounts: WireMount[] }>): Promise<Mount[]> => (await p).mounts.map(fromWireMount);
  let closed = false;
  return {
    async stat(key: string): Promise<Info> {
      return fromWireInfo((await call<{ info: WireInfo }>('Stat', { key })).info);
    },
    async update(info: Info, fieldpaths: string[] = []): Promise<Info> {
      return fromWireInfo((await call<{ info: WireInfo }>('Update', { info: toWireInfo(info), updateMask: { paths: fieldpaths } })).info);
    },
    async usage(key: string): Promise<Usage> {
      const u = await call<Usage>('Usage', { key });
      return { size: Number(u.size), inodes: Number(u.inodes) };
    },
    mounts: (key: string) => mounts(call('Mounts', { key })),
    prepare: (key: string, parent: string, o: SnapshotOptions = {}) => mounts(call('Prepare', { key, parent, labels: o.labels ?? {} })),
    view: (key: string, parent: string, o: SnapshotOptions = {}) => mounts(call('View', { key, parent, labels: o.labels ?? {} })),
    async commit(name: string, key: string, o: SnapshotOptions = {}): Promise<void> {
      await call('Commit', { name, key, labels: o.labels ?? {} });
    },
    async remove(key: string): Promise<void> {
      await call('Remove', { key });
    },
    async cleanup(): Promise<void> {
      await call('Cleanup', {});
    },
    async walk(fn: WalkFunction, filters: string[] = []): Promise<void> {
      const list = (client as unknown as Record<string, (req: unknown, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<{ info: WireInfo[] }>>)
        .List as (req: unknown, m: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<{ info: WireInfo[] }>;
      const stream = list.call(client, { snapshotter, filters }, metadata, { deadline: Date.now() + timeoutMs });
      const infos: Info[] = [];
      try {
        for await (const msg of stream) for (const w of (msg as { info: WireInfo[] }).info) infos.push(fromWireInfo(w));
      } catch (e) {
        throw fromGrpcError(e as grpc.ServiceError);
      }
      for (const info of infos) await fn(info);
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      client.close();
    },
  };
}
