/**
 * The parts of containerd's own gRPC API that `rpull` needs besides the snapshots
 * service: content (info, label update, streaming write), images (get, create, update)
 * and leases (create, delete). Protos live in `proto/containerd/services/…` (containerd's
 * package, message and field numbers) and are loaded at run time like `snapshots.proto`.
 * Every call carries the `containerd-namespace` metadata, plus `containerd-lease` once
 * {@link ContainerdClient.lease} is set, so what is written stays out of the garbage
 * collector's reach until the lease is deleted. gRPC status codes become domain errors
 * here (this client is an edge).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
  UnsupportedError,
} from '../io/errors.ts';
import { protoDir, snapshotsService, warmCodecs } from './_proto.ts';

/** The gRPC metadata key containerd reads the namespace from. */
export const NAMESPACE_HEADER = 'containerd-namespace';
/** The gRPC metadata key containerd reads the lease from. */
export const LEASE_HEADER = 'containerd-lease';

/** An OCI descriptor as containerd's images service carries it. */
export interface ContainerdDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** An image record of containerd's images service. */
export interface ContainerdImage {
  name: string;
  labels: Record<string, string>;
  target: ContainerdDescriptor;
}

/** Content-store facts about one blob. */
export interface ContainerdContentInfo {
  digest: string;
  size: number;
  labels: Record<string, string>;
}

type Ctor = grpc.ServiceClientConstructor;
type Callback = (e: grpc.ServiceError | null, res: unknown) => void;
type Unary = (...args: [unknown, grpc.Metadata, grpc.CallOptions, Callback]) => void;
type Duplex = (md: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientDuplexStream<unknown, unknown>;

let services: { content: Ctor; images: Ctor; leases: Ctor } | undefined;

function loadServices(): { content: Ctor; images: Ctor; leases: Ctor } {
  if (services !== undefined) return services;
  const files = ['content/v1/content.proto', 'images/v1/images.proto', 'leases/v1/leases.proto'].map((f) => `containerd/services/${f}`);
  const def = protoLoader.loadSync(files, { includeDirs: [protoDir()], keepCase: false, longs: Number, enums: String, defaults: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    containerd: { services: { content: { v1: { Content: Ctor } }; images: { v1: { Images: Ctor } }; leases: { v1: { Leases: Ctor } } } };
  };
  const s = pkg.containerd.services;
  services = { content: s.content.v1.Content, images: s.images.v1.Images, leases: s.leases.v1.Leases };
  return services;
}

/** Loads containerd's service definitions and runs their codecs once (see `warmCodecs`), off a pull's path. */
export function warmContainerdClient(): void {
  for (const ctor of Object.values(loadServices())) warmCodecs(ctor.service);
  warmCodecs(snapshotsService().service);
}

/** containerd's gRPC status → domain error (containerd `errgrpc.ToNative`). */
export function fromContainerdError(e: unknown, action: string): Error {
  const se = e as Partial<grpc.ServiceError>;
  if (typeof se.code !== 'number') return e instanceof Error ? e : new Error(String(e));
  const msg = `Cannot ${action}: containerd answered ${se.details || se.message}`;
  const o = { cause: e };
  switch (se.code) {
    case grpc.status.NOT_FOUND:
      return new NotFoundError(msg, o);
    case grpc.status.ALREADY_EXISTS:
      return new AlreadyExistsError(msg, o);
    case grpc.status.FAILED_PRECONDITION:
      return new FailedPreconditionError(msg, o);
    case grpc.status.INVALID_ARGUMENT:
    case grpc.status.OUT_OF_RANGE:
      return new InvalidArgumentError(msg, o);
    case grpc.status.UNIMPLEMENTED:
      return new UnsupportedError(msg, o);
    case grpc.status.UNAVAILABLE:
    case grpc.status.DEADLINE_EXCEEDED:
      return new UnavailableError(msg, o);
    default:
      return new Error(msg, o);
  }
}

/** Largest data chunk of one content Write message (gRPC's default limit is 4 MiB). */
const WRITE_CHUNK = 1 << 20;

/** A connection to containerd's content, images and leases services in one namespace. */
export class ContainerdClient {
  readonly #clients: Record<'content' | 'images' | 'leases', grpc.Client>;
  readonly #namespace: string;
  readonly #timeoutMs: number;
  /** Lease ID sent with every call when set. */
  lease: string | undefined;

  constructor(address: string, options: { namespace: string; timeoutMs?: number }) {
    const s = loadServices();
    const target = `unix:${address}`;
    const creds = grpc.credentials.createInsecure();
    this.#clients = { content: new s.content(target, creds), images: new s.images(target, creds), leases: new s.leases(target, creds) };
    this.#namespace = options.namespace;
    this.#timeoutMs = options.timeoutMs ?? 60_000;
  }

  /** Metadata of each call: namespace, and the lease when one is set. */
  metadata(): Record<string, string> {
    return { [NAMESPACE_HEADER]: this.#namespace, ...(this.lease === undefined ? {} : { [LEASE_HEADER]: this.lease }) };
  }

  #md(): grpc.Metadata {
    const md = new grpc.Metadata();
    for (const [k, v] of Object.entries(this.metadata())) md.set(k, v);
    return md;
  }

  /** One unary call; `action` words the error ("Cannot <action>: containerd answered …"). */
  #call<T>(rpc: { service: 'content' | 'images' | 'leases'; method: string; action: string }, req: unknown): Promise<T> {
    const { service, method, action } = rpc;
    const client = this.#clients[service];
    const fn = (client as unknown as Record<string, Unary>)[method] as Unary;
    return new Promise((resolve, reject) => {
      fn.call(client, req, this.#md(), { deadline: Date.now() + this.#timeoutMs }, (e, res) => (e ? reject(fromContainerdError(e, action)) : resolve(res as T)));
    });
  }

  /** Creates a lease (its ID is returned, not set on this client). */
  async createLease(id: string, labels: Record<string, string>): Promise<string> {
    const res = await this.#call<{ lease: { id: string } }>({ service: 'leases', method: 'Create', action: `create lease ${id}` }, { id, labels });
    return res.lease.id;
  }

  /** Deletes a lease: what only it held becomes collectable. */
  async deleteLease(id: string): Promise<void> {
    await this.#call({ service: 'leases', method: 'Delete', action: `delete lease ${id}` }, { id, sync: false });
  }

  /** Content-store info of `digest`, or undefined when the namespace has no such blob. */
  async contentInfo(digest: string): Promise<ContainerdContentInfo | undefined> {
    try {
      const res = await this.#call<{ info: ContainerdContentInfo }>({ service: 'content', method: 'Info', action: `stat content ${digest}` }, { digest });
      return { digest: res.info.digest, size: Number(res.info.size), labels: { ...res.info.labels } };
    } catch (e) {
      if (e instanceof NotFoundError) return undefined;
      throw e;
    }
  }

  /** Sets `labels` on committed content, leaving its other labels alone. */
  async setContentLabels(digest: string, labels: Record<string, string>): Promise<void> {
    const paths = Object.keys(labels).map((k) => `labels.${k}`);
    await this.#call({ service: 'content', method: 'Update', action: `label content ${digest}` }, { info: { digest, labels }, updateMask: { paths } });
  }

  /**
   * Writes `bytes` as content `digest` through the Write stream (stat, write in chunks,
   * commit with the expected digest and size and `labels`); containerd verifies both.
   * Content that already exists is not written again; its labels are set.
   * Resolves with `written` false in that case.
   */
  async writeContent(o: { ref: string; digest: string; bytes: Uint8Array; labels: Record<string, string> }): Promise<{ written: boolean }> {
    const action = `write content ${o.digest}`;
    const total = o.bytes.length;
    const fn = (this.#clients.content as unknown as Record<string, Duplex>)['Write'] as Duplex;
    const stream = fn.call(this.#clients.content, this.#md(), { deadline: Date.now() + this.#timeoutMs });
    // Errors are read through the iterator; the cancel in `finally` must not become an uncaught 'error'.
    stream.on('error', () => undefined);
    const responses = stream[Symbol.asyncIterator]() as AsyncIterator<{ offset: number; digest: string }>;
    const exchange = async (req: Record<string, unknown>): Promise<{ offset: number; digest: string }> => {
      stream.write({ ref: o.ref, ...req });
      const next = await responses.next();
      if (next.done === true) throw new UnavailableError(`Cannot ${action}: containerd closed the write stream`);
      return next.value;
    };
    try {
      await exchange({ action: 'STAT', total, expected: o.digest });
      // Offset 0 truncates whatever an earlier, interrupted write left under this ref.
      for (let off = 0; off < total; off += WRITE_CHUNK) {
        await exchange({ action: 'WRITE', offset: off, data: Buffer.from(o.bytes.subarray(off, Math.min(total, off + WRITE_CHUNK))) });
      }
      const done = await exchange({ action: 'COMMIT', total, offset: total, expected: o.digest, labels: o.labels });
      if (done.digest !== o.digest) throw new FailedPreconditionError(`Cannot ${action}: containerd committed ${done.digest}`);
      return { written: true };
    } catch (e) {
      const err = fromContainerdError(e, action);
      if (!(err instanceof AlreadyExistsError)) throw err;
      await this.setContentLabels(o.digest, o.labels);
      return { written: false };
    } finally {
      stream.end();
      stream.cancel();
    }
  }

  /** The image record named `name`, or undefined. */
  async getImage(name: string): Promise<ContainerdImage | undefined> {
    try {
      const res = await this.#call<{ image: ContainerdImage }>({ service: 'images', method: 'Get', action: `get image ${name}` }, { name });
      return { name: res.image.name, labels: { ...res.image.labels }, target: { ...res.image.target, size: Number(res.image.target.size) } };
    } catch (e) {
      if (e instanceof NotFoundError) return undefined;
      throw e;
    }
  }

  /** Creates the image record, or replaces target and labels of an existing one. */
  async putImage(image: ContainerdImage): Promise<'created' | 'updated'> {
    try {
      await this.#call({ service: 'images', method: 'Create', action: `create image ${image.name}` }, { image });
      return 'created';
    } catch (e) {
      if (!(e instanceof AlreadyExistsError)) throw e;
      await this.#call({ service: 'images', method: 'Update', action: `update image ${image.name}` }, { image, updateMask: { paths: [] } });
      return 'updated';
    }
  }

  /** Closes the channels. */
  close(): void {
    for (const c of Object.values(this.#clients)) c.close();
  }
}
