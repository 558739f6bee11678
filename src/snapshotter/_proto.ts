/**
 * Loads `proto/snapshots.proto` (containerd's snapshots service) with @grpc/proto-loader
 * and converts between the wire messages and the snapshotter's types. The .proto files
 * stay in src/snapshotter/proto; from compiled output (dist/src/snapshotter) the loader
 * walks up to the package root to find them, as src/native does for the binding.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { Info, Kind, Mount } from './snapshotter.ts';

/** The fully qualified service name containerd dials. */
export const SERVICE_NAME = 'containerd.services.snapshots.v1.Snapshots';

/** Directory holding snapshots.proto (and containerd/types/mount.proto). */
export function protoDir(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  let dir = here;
  for (let i = 0; i < 6; i++) {
    for (const candidate of [join(dir, 'proto'), join(dir, 'src', 'snapshotter', 'proto')]) {
      if (existsSync(join(candidate, 'snapshots.proto'))) return candidate;
    }
    dir = dirname(dir);
  }
  throw new Error(`Cannot find snapshots.proto from ${here}: expected src/snapshotter/proto in the package`);
}

let cached: grpc.ServiceClientConstructor | undefined;

/** The generated client constructor; `.service` is the service definition for servers. */
export function snapshotsService(): grpc.ServiceClientConstructor {
  if (cached !== undefined) return cached;
  const def = protoLoader.loadSync('snapshots.proto', {
    includeDirs: [protoDir()],
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
  });
  const pkg = grpc.loadPackageDefinition(def) as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: grpc.ServiceClientConstructor } } } };
  };
  cached = pkg.containerd.services.snapshots.v1.Snapshots;
  return cached;
}

/** Service definitions whose codecs {@link warmCodecs} already ran. */
const warmed = new WeakSet<grpc.ServiceDefinition>();

/**
 * Runs every codec of `service` once on empty messages (and on one nested Info, Mount
 * and label map), so that protobufjs generates its encoders and decoders now rather
 * than on the first call: ~40 ms of CPU on a small machine, on the first pull's path
 * otherwise. Once per definition (the daemon's server and its pull client share the
 * snapshots service's). Never throws.
 */
export function warmCodecs(service: grpc.ServiceDefinition): void {
  if (warmed.has(service)) return;
  warmed.add(service);
  const sample = { info: { labels: { k: 'v' } }, mounts: [{ options: [''] }], labels: { k: 'v' } };
  for (const m of Object.values(service)) {
    for (const run of [
      () => m.requestSerialize({}),
      () => m.requestSerialize(sample),
      () => m.responseSerialize({}),
      () => m.responseSerialize(sample),
      () => m.requestDeserialize(Buffer.alloc(0)),
      () => m.responseDeserialize(Buffer.alloc(0)),
    ]) {
      try {
        run();
      } catch {
        // A message without those fields: nothing to warm.
      }
    }
  }
}

/** Wire form of a google.protobuf.Timestamp. */
export interface WireTimestamp {
  seconds: number;
  nanos: number;
}

/** Wire form of containerd.services.snapshots.v1.Info. */
export interface WireInfo {
  name: string;
  parent: string;
  kind: 'UNKNOWN' | 'VIEW' | 'ACTIVE' | 'COMMITTED';
  createdAt: WireTimestamp | null;
  updatedAt: WireTimestamp | null;
  labels: Record<string, string>;
}

/** Wire form of containerd.types.Mount. */
export interface WireMount {
  type: string;
  source: string;
  target: string;
  options: string[];
}

const TO_WIRE_KIND: Record<Kind, WireInfo['kind']> = { view: 'VIEW', active: 'ACTIVE', committed: 'COMMITTED' };

function toTimestamp(d: Date): WireTimestamp {
  const ms = d.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1e6 };
}

function fromTimestamp(t: WireTimestamp | null | undefined): Date {
  return t == null ? new Date(0) : new Date(Number(t.seconds) * 1000 + Math.floor(t.nanos / 1e6));
}

/** Info → wire Info (timestamps as seconds + nanos). */
export function toWireInfo(info: Info): WireInfo {
  return {
    name: info.name,
    parent: info.parent,
    kind: TO_WIRE_KIND[info.kind],
    createdAt: toTimestamp(info.created),
    updatedAt: toTimestamp(info.updated),
    labels: info.labels,
  };
}

/** Wire Info → Info (a missing timestamp reads as the epoch). */
export function fromWireInfo(w: WireInfo): Info {
  const kind = w.kind === 'VIEW' ? 'view' : w.kind === 'ACTIVE' ? 'active' : 'committed';
  return { name: w.name, parent: w.parent, kind, created: fromTimestamp(w.createdAt), updated: fromTimestamp(w.updatedAt), labels: { ...w.labels } };
}

/** Mount → wire Mount (`target` empty when absent). */
export function toWireMount(m: Mount): WireMount {
  return { type: m.type, source: m.source, target: m.target ?? '', options: m.options };
}

/** Wire Mount → Mount. */
export function fromWireMount(w: WireMount): Mount {
  return { type: w.type, source: w.source, ...(w.target === '' ? {} : { target: w.target }), options: [...w.options] };
}
