/**
 * Cold start of a container: full pull (overlayfs) against lazy pull (overlaybd), same
 * image, same simulated network, same run.
 *
 * Setup: a Debian bookworm rootfs with python3 (debootstrap, ≥ 200 MB), stored as an OCI
 * image of gzip layers and as its overlaybd conversion by our convertor (`obd convert
 * --algorithm zstd`: ZFile blocks compressed with zstd, which upstream's convertor offers
 * beside its default lz4; the lazily fetched bytes are about a quarter fewer, 10.3 MB
 * against 14.1 MB for (b)), both cached under /var/tmp/obd-bench-cache keyed by their
 * inputs (see bench/support/bench-image.ts), pushed to Debian's docker-registry on
 * 127.0.0.1. Clients reach the registry only through a simulated link
 * (bench/support/slow-link.ts, a TCP relay) that delays every new connection by 10 ms
 * and every request by 10 ms and caps the bytes sent to all clients together at
 * 200 Mbit/s (token bucket); it counts connections, requests and bytes. A
 * private containerd 1.6 runs with our snapshotter daemon as proxy snapshotter
 * `overlaybd`; the daemon and `obd rpull` run from the build output (`node
 * dist/src/cli/bin/obd.js`, built first when stale), as a user runs them.
 *
 * Cases (before each cold one: `sync`, page cache dropped, then {@link SETTLE_MS} of quiet so
 * that the previous case's teardown — e.g. deleting (a)'s unpacked layers — does not run
 * into it):
 * - (a) `ctr images pull --plain-http REF:oci` (overlayfs snapshotter: fetch + unpack)
 *   and `ctr run --rm REF:oci python3 -c 'import json, sqlite3, email'`;
 * - (b) lazy pull (`obd rpull`, which hands the pull to the snapshotter daemon through its
 *   pull socket, src/snapshotter/pull-socket.ts) + `ctr run --rm --snapshotter overlaybd`
 *   of the same command with trace
 *   replay. The trace is recorded before the timed cases as a user does with `ctr
 *   record-trace` (one run of the command with the snapshotter's record-trace labels in
 *   a containerd of its own; see bench/support/accel-image.ts; cached) and turned into
 *   the acceleration-layer image `REF:obd-accel` (pushed). By default (OBD_BENCH_ACCEL=layer)
 *   (b) is `obd rpull REF:obd-accel` + run, what a user of an accelerated image does; with
 *   OBD_BENCH_ACCEL=label it is `obd rpull REF:obd` + run with the labels
 *   `…/record-trace=yes`, `…/record-trace-path=<a copy of the trace>`, the snapshotter's
 *   other replay trigger (snapshotter.md §11.2). With the acceleration layer the
 *   snapshotter attaches the device when rpull commits that layer (`attachOnPull`,
 *   src/snapshotter/README.md), so the replay overlaps the rest of rpull and the start of
 *   `ctr run`; with the labels it is attached at the container's Prepare. Either way the
 *   device replays the trace in the background and reads on demand;
 * - (c) (b) again: the image is present, the device attached, its data cached;
 * - (p) for comparison, (b) with the plain overlaybd image `REF:obd`, in a fresh
 *   containerd + snapshotter (empty caches).
 * (a)'s image, content and snapshots are removed before (b).
 *
 * Prints a table (seconds per phase, bytes through the link (headers included), requests), then
 * `RESULT cold-start/b-over-a <ratio>`, `RESULT cold-start/b-over-c <ratio>` and
 * `RESULT cold-start/plain-b-over-a <ratio>` (target b/a <= 0.2).
 *
 * Environment: OBD_BENCH_CACHE (cache directory), OBD_BENCH_ACCEL (`label` or `layer`,
 * see (b)), OBD_BENCH_ALGORITHM (`zstd`, the default, or `lz4`: the conversion's ZFile
 * compression), OBD_BENCH_DIST (another checkout whose build to run, for A/B runs;
 * bench/support/dist-cli.ts), OBD_BENCH_PACKAGES (debootstrap
 * --include list, comma-separated), OBD_BENCH_TIMELINE=1 (print every request through
 * the link per phase), OBD_BENCH_DEBUG=1 (the snapshotter daemon's NODE_DEBUG=obd log).
 *
 * Needs root, debootstrap, containerd, ctr, runc, docker-registry, losetup, /dev/fuse,
 * and (first run) the Debian mirror.
 * Run: `npm run bench -- cold-start` (or `node --import tsx bench/cold-start.ts`).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, writeFileSync } from 'node:fs';
import { setPriority } from 'node:os';
import { join } from 'node:path';
import { startRegistry, type TestRegistry } from '../test/support/registry.ts';
import { SlowLink } from './support/slow-link.ts';
import { RequestTimeline } from './support/request-timeline.ts';
import { ContainerdEnv, sh } from './support/containerd-env.ts';
import { ensureBuilt, OBD, REPO_ROOT } from './support/dist-cli.ts';
import { benchImages, pythonRootfs, PYTHON_LAYERS } from './support/bench-image.ts';
import { accelImage } from './support/accel-image.ts';

const CACHE_DIR = process.env['OBD_BENCH_CACHE'] ?? '/var/tmp/obd-bench-cache';
const NS = 'obdbench';
const RTT_MS = 10;
const BANDWIDTH = 200e6 / 8;
const COMMAND = ['python3', '-c', 'import json, sqlite3, email; print("cold-start ok")'];
const TOOLS = ['debootstrap', 'containerd', 'ctr', 'runc', 'docker-registry', 'losetup', 'gzip'];

const ROOTFS = pythonRootfs(process.env['OBD_BENCH_PACKAGES']);
const LAYERS = PYTHON_LAYERS;

const log = (line: string): void => console.log(`# ${line}`);

function preflight(): void {
  if (process.getuid?.() !== 0) throw new Error('Cannot run cold-start: needs root');
  const missing = TOOLS.filter((t) => spawnSync('sh', ['-c', `command -v ${t}`], { timeout: 5000 }).status !== 0);
  if (missing.length > 0) throw new Error(`Cannot run cold-start: needs ${missing.join(', ')}`);
  if (!existsSync('/dev/fuse')) throw new Error('Cannot run cold-start: needs /dev/fuse');
}

/** Quiet time after dropping the caches, before a cold case. */
const SETTLE_MS = 2000;

function dropCaches(): void {
  spawnSync('sync', [], { timeout: 60_000 });
  writeFileSync('/proc/sys/vm/drop_caches', '3');
  spawnSync('sleep', [String(SETTLE_MS / 1000)]);
}

interface Phase {
  name: string;
  seconds: number;
  bytes: number;
  requests: number;
  connections: number;
}

async function main(): Promise<void> {
  preflight();
  // Everything the bench starts inherits this: other jobs on the machine disturb it less.
  setPriority(-10);
  await ensureBuilt(log);
  const algorithm = process.env['OBD_BENCH_ALGORITHM'] === 'lz4' ? 'lz4' : 'zstd';
  const images = await benchImages({ cacheDir: CACHE_DIR, repoRoot: REPO_ROOT, rootfs: ROOTFS, layers: LAYERS, obd: OBD, algorithm, log });
  const mb = (n: number): string => `${(n / 1e6).toFixed(1)} MB`;
  log(`image: rootfs ${mb(images.rootfsBytes)}, OCI layers ${mb(images.ociLayerBytes)} (gzip), overlaybd layers ${mb(images.obdLayerBytes)}`);
  if (images.rootfsBytes < 200e6) throw new Error(`Cannot run cold-start: the rootfs is ${mb(images.rootfsBytes)}, under 200 MB`);

  let reg: TestRegistry | undefined;
  let link: SlowLink | undefined;
  let env: ContainerdEnv | undefined;
  let cleaning: Promise<void> | undefined;
  // Once: a signal's cleanup and the failing main flow's `finally` share it.
  const cleanup = (): Promise<void> =>
    (cleaning ??= (async () => {
      await env?.stop((l) => log(l));
      await link?.close().catch(() => undefined);
      await reg?.stop().catch(() => undefined);
    })());
  const onSignal = (): void => {
    void cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    reg = await startRegistry({ auth: 'none' });
    for (const [layout, tag] of [[images.oci, 'oci'], [images.obd, 'obd']] as const) {
      await sh([...OBD, 'push', `oci:${layout}:${tag}`, `${reg.host}/bench/python:${tag}`, '--plain-http', reg.host], 600_000);
    }
    const accel = await accelImage({ cacheDir: CACHE_DIR, obdLayout: images.obd, ref: `${reg.host}/bench/python:obd`, registryHost: reg.host, command: COMMAND, obd: OBD, log });
    log(`acceleration layer: ${accel.records} reads covering ${mb(accel.tracedBytes)} (trace ${accel.traceBytes} bytes)`);
    await sh([...OBD, 'push', `oci:${accel.layout}:obd-accel`, `${reg.host}/bench/python:obd-accel`, '--plain-http', reg.host], 600_000);
    const timeline = new RequestTimeline();
    const onData = process.env['OBD_BENCH_TIMELINE'] ? { onData: timeline.onData } : {};
    link = await SlowLink.start({ upstreamPort: Number(new URL(reg.url).port), connectDelayMs: RTT_MS, requestDelayMs: RTT_MS, bandwidthBytesPerSecond: BANDWIDTH, ...onData });
    const host = `127.0.0.1:${link.port}`;
    const ref = (tag: string): string => `${host}/bench/python:${tag}`;
    const startEnv = (): Promise<ContainerdEnv> =>
      ContainerdEnv.start({ obd: OBD, namespace: NS, plainHttp: [host], ...(process.env['OBD_BENCH_DEBUG'] ? { daemonEnv: { NODE_DEBUG: 'obd' } } : {}) });
    env = await startEnv();
    let e = env;
    const lk = link;

    const phases: Phase[] = [];
    const timed = async (name: string, fn: () => Promise<string>): Promise<string> => {
      lk.resetCounters();
      const t0 = performance.now();
      const out = await fn();
      const seconds = (performance.now() - t0) / 1000;
      const n = lk.counters;
      phases.push({ name, seconds, bytes: n.bytesDown, requests: n.requests, connections: n.connections });
      log(`${name}: ${seconds.toFixed(2)} s`);
      if (process.env['OBD_BENCH_TIMELINE']) for (const line of timeline.format(t0)) log(`  ${line}`);
      return out;
    };
    const checkRun = (out: string, what: string): void => {
      if (!out.includes('cold-start ok')) throw new Error(`Cannot run ${what}: the container printed ${JSON.stringify(out.slice(0, 500))}`);
    };

    // (a) full pull + run on overlayfs.
    dropCaches();
    await timed('a pull', () => e.ctr(['images', 'pull', '--plain-http', ref('oci')]));
    checkRun(await timed('a run', () => e.run([ref('oci'), 'cs-a', ...COMMAND])), '(a)');
    await e.ctr(['images', 'rm', '--sync', ref('oci')]);
    await e.collectGarbage();

    // (b) lazy pull + run on overlaybd with trace replay, cold.
    const viaLayer = (process.env['OBD_BENCH_ACCEL'] ?? 'layer') === 'layer';
    const bTag = viaLayer ? 'obd-accel' : 'obd';
    const replayTrace = join(e.dir, 'replay.trace');
    copyFileSync(join(accel.layout, 'trace'), replayTrace);
    const bLabels = viaLayer
      ? []
      : ['--snapshotter-label', 'containerd.io/snapshot/overlaybd/record-trace=yes', '--snapshotter-label', `containerd.io/snapshot/overlaybd/record-trace-path=${replayTrace}`];
    log(`(b) replays the trace ${viaLayer ? 'of the acceleration layer (REF:obd-accel)' : 'given by the record-trace-path label (REF:obd)'}`);
    dropCaches();
    // Through the daemon's pull socket, as with the default config (its socket lies beside the daemon's).
    const rpull = (tag: string): Promise<string> => sh([...OBD, 'rpull', ref(tag), '--address', e.socket, '--namespace', NS, '--plain-http', host, '--daemon', e.pullSocket], 300_000);
    await timed('b rpull', () => rpull(bTag));
    checkRun(await timed('b run', () => e.run(['--snapshotter', 'overlaybd', ...bLabels, ref(bTag), 'cs-b', ...COMMAND])), '(b)');

    // (c) the same again, warm.
    await timed('c rpull', () => rpull(bTag));
    checkRun(await timed('c run', () => e.run(['--snapshotter', 'overlaybd', ref(bTag), 'cs-c', ...COMMAND])), '(c)');

    // (p) (b) with the plain overlaybd image, in a fresh containerd and snapshotter (cold caches).
    const debugLog = e.daemonLog();
    await e.stop((l) => log(l));
    env = undefined;
    env = await startEnv();
    e = env;
    dropCaches();
    await timed('p rpull', () => rpull('obd'));
    checkRun(await timed('p run', () => e.run(['--snapshotter', 'overlaybd', ref('obd'), 'cs-p', ...COMMAND])), '(p)');

    const sum = (prefix: string): Phase =>
      phases
        .filter((x) => x.name.startsWith(prefix))
        .reduce((s, x) => ({ name: `${prefix} total`, seconds: s.seconds + x.seconds, bytes: s.bytes + x.bytes, requests: s.requests + x.requests, connections: s.connections + x.connections }), {
          name: '',
          seconds: 0,
          bytes: 0,
          requests: 0,
          connections: 0,
        });
    const [a, b, c, plain] = [sum('a'), sum('b'), sum('c'), sum('p')];
    console.log(`image ${mb(images.rootfsBytes)} unpacked; OCI ${mb(images.ociLayerBytes)} gzip in ${LAYERS.length} layers; overlaybd ${mb(images.obdLayerBytes)}`);
    console.log(`network: +${RTT_MS} ms per connection and per request, ${BANDWIDTH * 8 / 1e6} Mbit/s shared; command: ${COMMAND.join(' ')}`);
    console.log(`${'phase'.padEnd(12)} ${'seconds'.padStart(8)} ${'MB fetched'.padStart(11)} ${'requests'.padStart(9)} ${'conns'.padStart(6)}`);
    for (const x of [...phases.slice(0, 2), a, ...phases.slice(2, 4), b, ...phases.slice(4, 6), c, ...phases.slice(6, 8), plain]) {
      console.log(`${x.name.padEnd(12)} ${x.seconds.toFixed(2).padStart(8)} ${(x.bytes / 1e6).toFixed(1).padStart(11)} ${String(x.requests).padStart(9)} ${String(x.connections).padStart(6)}`);
    }
    console.log(`RESULT cold-start/b-over-a ${(b.seconds / a.seconds).toFixed(3)}`);
    console.log(`RESULT cold-start/b-over-c ${(b.seconds / c.seconds).toFixed(3)}`);
    console.log(`RESULT cold-start/plain-b-over-a ${(plain.seconds / a.seconds).toFixed(3)}`);
    if (process.env['OBD_BENCH_DEBUG']) console.log(`${debugLog}\n${e.daemonLog()}`);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
}

await main();
