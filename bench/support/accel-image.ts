/**
 * The cold-start benchmark's accelerated image, prepared as a user does with `ctr
 * record-trace` (image-format.md §9, snapshotter.md §11.2), and cached under the bench
 * cache keyed by its inputs (the overlaybd image and the command):
 *
 * 1. recording: in a private containerd + snapshotter of its own (so that nothing it
 *    pulls or caches reaches the timed runs), `obd rpull` the overlaybd image and `ctr
 *    run` the command with the snapshotter labels `…/record-trace=yes` and
 *    `…/record-trace-path=FILE` (FILE created empty); then the lock file `FILE.lock` is
 *    removed and `FILE.ok` awaited (the device keeps running, as after `ctr record-trace
 *    --time`);
 * 2. the image: the overlaybd image's layers plus a plain tar layer holding only `trace`
 *    (mode 0444, owner 0, mtime 0) with the annotations `…/acceleration-layer: yes`,
 *    `…/version`, `…/blob-digest`, `…/blob-size` (and `…/blob-fs-type` of the old top
 *    layer), config `diff_ids` appended and a history entry prepended; tag `obd-accel`.
 *
 * The layout holds hard links to the overlaybd layout's blobs; building goes to
 * `<dir>.tmp`, renamed into place when complete.
 */
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, unlink, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { OciLayout } from '../../src/image/oci-layout.ts';
import { addAccelerationLayer } from '../../src/convert/acceleration-layer.ts';
import { decodeTrace } from '../../src/device/trace-file.ts';
import { ContainerdEnv, sh } from './containerd-env.ts';

const LABEL = 'containerd.io/snapshot/overlaybd';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The accelerated image's layout and what the recording saw. */
export interface AccelImage {
  /** OCI layout directory; tag `obd-accel`. */
  layout: string;
  /** Bytes of the trace file. */
  traceBytes: number;
  /** Reads recorded. */
  records: number;
  /** Bytes the recorded reads cover. */
  tracedBytes: number;
}

function run(argv: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr.slice(-4000)}`));
      else resolve(stdout);
    });
  });
}

/** Records the trace of `command` run from `ref` (pulled from `registryHost` over plain HTTP) into `trace`. */
async function recordTrace(o: { obd: string[]; registryHost: string; ref: string; command: string[]; trace: string; log: (l: string) => void }): Promise<void> {
  await writeFile(o.trace, '');
  const env = await ContainerdEnv.start({ obd: o.obd, namespace: 'obdrecord', plainHttp: [o.registryHost] });
  try {
    await sh([...o.obd, 'rpull', o.ref, '--address', env.socket, '--namespace', env.namespace, '--plain-http', o.registryHost], 300_000);
    const out = await env.run([
      '--snapshotter', 'overlaybd',
      '--snapshotter-label', `${LABEL}/record-trace=yes`,
      '--snapshotter-label', `${LABEL}/record-trace-path=${o.trace}`,
      o.ref, 'cs-record', ...o.command,
    ]);
    o.log(`recording run printed ${JSON.stringify(out.trim().slice(0, 200))}`);
    if (!existsSync(`${o.trace}.ok`)) {
      if (!existsSync(`${o.trace}.lock`)) throw new Error(`Cannot record a trace: the device never created ${o.trace}.lock\n${env.daemonLog().slice(-4000)}`);
      await unlink(`${o.trace}.lock`);
      for (let i = 0; i < 100 && !existsSync(`${o.trace}.ok`); i++) await sleep(200);
      if (!existsSync(`${o.trace}.ok`)) throw new Error(`Cannot record a trace: no ${o.trace}.ok 20 s after removing the lock`);
    }
  } finally {
    await env.stop((l) => o.log(l));
  }
}

async function writeAccelLayout(o: { obdLayout: string; tag: string; trace: string; dir: string }): Promise<void> {
  const src = await OciLayout.open(o.obdLayout);
  const manifestDesc = await src.resolve(o.tag);
  await mkdir(join(o.dir, 'blobs'), { recursive: true });
  await run(['cp', '-al', join(o.obdLayout, 'blobs', 'sha256'), join(o.dir, 'blobs', 'sha256')], 60_000);
  const layout = await OciLayout.openOrCreate(o.dir);
  await layout.tag(manifestDesc, o.tag);
  await addAccelerationLayer({ layout, from: o.tag, to: 'obd-accel', trace: new Uint8Array(await readFile(o.trace)) });
}

/**
 * Builds (or finds cached) the accelerated image of the overlaybd layout `obdLayout`
 * (tag `obd`), which must already be pushed as `ref` to `registryHost`.
 */
export async function accelImage(o: {
  cacheDir: string;
  obdLayout: string;
  ref: string;
  registryHost: string;
  command: string[];
  obd: string[];
  log: (line: string) => void;
}): Promise<AccelImage> {
  const key = createHash('sha256').update(JSON.stringify({ obd: basename(o.obdLayout), command: o.command, v: 1 })).digest('hex').slice(0, 16);
  const obdName = basename(o.obdLayout);
  const dir = join(o.cacheDir, `accel-${obdName}-${key}`);
  if (!existsSync(dir)) {
    // One per overlaybd conversion: older recordings of it, and those of conversions gone.
    for (const e of readdirSync(o.cacheDir)) {
      const of = /^accel-(obd-.*)-[0-9a-f]{16}(\.tmp)?$/.exec(e)?.[1];
      if (e.startsWith('accel-') && (of === undefined || of === obdName || !existsSync(join(o.cacheDir, of)))) {
        await rm(join(o.cacheDir, e), { recursive: true, force: true });
      }
    }
    const tmp = `${dir}.tmp`;
    const work = await mkdtemp('/tmp/obd-record-');
    try {
      const trace = join(work, 'trace');
      o.log(`recording a trace of ${o.command.join(' ')} (containerd of its own, no network delay)`);
      await recordTrace({ obd: o.obd, registryHost: o.registryHost, ref: o.ref, command: o.command, trace, log: o.log });
      await mkdir(tmp, { recursive: true });
      await writeAccelLayout({ obdLayout: o.obdLayout, tag: 'obd', trace, dir: tmp });
      await writeFile(join(tmp, 'trace'), await readFile(trace));
      await rename(tmp, dir);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }
  const bytes = new Uint8Array(await readFile(join(dir, 'trace')));
  const records = decodeTrace(bytes);
  return { layout: dir, traceBytes: statSync(join(dir, 'trace')).size, records: records.length, tracedBytes: records.reduce((s, r) => s + r.count, 0) };
}
