/**
 * `obd convert SRC DST`: an OCI image (registry or `oci:DIR:TAG`) to an overlaybd image,
 * with upstream convertor's flags and its `-r REPO -i TAG -o TAG` form.
 * `--disable-sparse` is accepted and changes nothing: it picks the format of upstream's
 * temporary writable layers, which this convertor does not use (raw-image-builder.ts).
 */
import { join, resolve } from 'node:path';
import type { Command } from '../command.ts';
import type { CliIo } from '../io.ts';
import { processIo } from '../io.ts';
import { parse, flag, str, integer, zfileOptions, ZFILE_OPTIONS, type Parsed } from '../args.ts';
import { REMOTE_OPTIONS, plainHttpHosts, remoteAccessOptions } from '../remote-options.ts';
import { InvalidArgumentError } from '../../io/errors.ts';
import { RemoteAccess } from '../../image/remote-access.ts';
import { openImageEndpoint } from '../../image/image-endpoint.ts';
import { isOciLayoutRef, parseOciLayoutRef } from '../../image/oci-layout.ts';
import { parseReference } from '../../registry/reference.ts';
import { chainCredentials, staticCredentials } from '../../registry/credentials.ts';
import { convertImage, type ConvertEvent } from '../../convert/convert-image.ts';
import { openConversionCache } from '../../convert/open-conversion-cache.ts';
import { ProgressView } from '../../convert/progress-view.ts';

const usage =
  'obd convert SRC DST [--fstype ext4] [--vsize GB] [--no-mkfs [--base-layer FILE]] [--algorithm lz4|zstd] [--bs KiB] [--oci]\n' +
  '            [--concurrency-limit N] [--no-upload] [--dump-manifest] [--db PATH | --db-str URL [--db-type postgres] | --no-db] [--work-dir DIR] [--reserve]\n' +
  '            [--json] [--disable-sparse] [--plain-http HOST] [--insecure HOST] [--cred-file F] [--docker-config F]\n' +
  '       obd convert -r REPO (-i TAG | -g DIGEST) (-o TAG | --overlaybd TAG) [--plain] [-u USER:PASS] [-d DIR] ...\n' +
  '  SRC, DST: registry references or oci:DIR:TAG. --no-upload writes the result to oci:<work dir>/output:TAG.';

const OPTIONS = {
  ...REMOTE_OPTIONS,
  ...ZFILE_OPTIONS,
  fstype: { type: 'string' },
  vsize: { type: 'string' },
  mkfs: { type: 'boolean' },
  'no-mkfs': { type: 'boolean' },
  'base-layer': { type: 'string' },
  oci: { type: 'boolean' },
  'concurrency-limit': { type: 'string' },
  'no-upload': { type: 'boolean' },
  'dump-manifest': { type: 'boolean' },
  db: { type: 'string' },
  'db-str': { type: 'string' },
  'db-type': { type: 'string' },
  'no-db': { type: 'boolean' },
  'work-dir': { type: 'string' },
  dir: { type: 'string', short: 'd' },
  reserve: { type: 'boolean' },
  json: { type: 'boolean' },
  'disable-sparse': { type: 'boolean' }, // accepted, no effect (see the module comment)
  repository: { type: 'string', short: 'r' },
  'input-tag': { type: 'string', short: 'i' },
  'input-digest': { type: 'string', short: 'g' },
  'output-tag': { type: 'string', short: 'o' },
  overlaybd: { type: 'string' },
  plain: { type: 'boolean' },
  username: { type: 'string', short: 'u' },
  verbose: { type: 'boolean' },
} as const;


/** SRC and DST from the positional form or upstream's `-r/-i/-g/-o` form. */
function references(p: Parsed): { src: string; dst: string } {
  const repo = str(p, 'repository');
  if (repo === undefined) {
    if (p.positionals.length !== 2) throw new InvalidArgumentError(`Expected SRC DST (or -r REPO -i TAG -o TAG)\nusage: ${usage}`);
    return { src: p.positionals[0] as string, dst: p.positionals[1] as string };
  }
  if (p.positionals.length !== 0) throw new InvalidArgumentError(`Give either SRC DST or -r REPO, not both\nusage: ${usage}`);
  const inTag = str(p, 'input-tag');
  const inDigest = str(p, 'input-digest');
  const outTag = str(p, 'overlaybd') ?? str(p, 'output-tag');
  if (inTag === undefined && inDigest === undefined) throw new InvalidArgumentError('One of --input-tag (-i) and --input-digest (-g) is required with -r');
  if (outTag === undefined) throw new InvalidArgumentError('An output tag (-o or --overlaybd) is required with -r');
  return { src: inTag !== undefined ? `${repo}:${inTag}` : `${repo}@${inDigest}`, dst: `${repo}:${outTag}` };
}

/** Per-layer progress on a terminal: one line rewritten in place. */
/**
 * What `obd convert` shows while it runs: with `--json` every event as a JSON line on
 * standard output; on a terminal a frame of per-layer progress lines (phase, bar, bytes,
 * rate; see ProgressView) redrawn on standard error at most every 100 ms; otherwise
 * only warnings.
 */
function progressPrinter(io: CliIo, json: boolean): (e: ConvertEvent) => void {
  if (json) return (e) => io.out(`${JSON.stringify(e)}\n`);
  const tty = io === processIo && process.stderr.isTTY === true;
  const view = new ProgressView();
  let drawn = 0;
  let last = 0;
  return (e) => {
    if (e.type === 'warning') {
      io.err(`warning: ${e.platform ? `[${e.platform}] ` : ''}${e.entry ? `${e.entry}: ` : ''}${e.message}\n`);
      return;
    }
    if (!tty || e.type !== 'layer') return;
    const now = Date.now();
    view.update(e, now);
    if (!e.done && now - last < 100) return;
    last = now;
    const columns = process.stderr.columns ?? 0;
    const lines = view.render(now, columns > 40 ? columns - 1 : 100);
    // Back to the top of the previous frame, then every line cleared and redrawn.
    io.err(`${drawn > 0 ? `\x1b[${drawn}F` : ''}${lines.map((l) => `\x1b[2K${l}\n`).join('')}`);
    drawn = lines.length;
  };
}

export const convertCommand: Command = {
  name: 'convert',
  summary: 'convert an OCI image into an overlaybd image (every platform of an index)',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: OPTIONS, usage, min: 0, max: 2 });
    const refs = references(p);
    const workDir = resolve(str(p, 'work-dir') ?? str(p, 'dir') ?? 'tmp_conv');
    const vsize = integer(str(p, 'vsize') ?? '64', '--vsize');
    if (vsize < 1) throw new InvalidArgumentError('Invalid --vsize 0: expected at least 1 (GiB)');
    const concurrency = integer(str(p, 'concurrency-limit') ?? '4', '--concurrency-limit');
    const zfile = zfileOptions(p);
    const plainHttp = plainHttpHosts(p);
    const repo = str(p, 'repository');
    if (flag(p, 'plain') && repo !== undefined && !isOciLayoutRef(repo)) plainHttp.push(parseReference(`${repo}:x`).registry);
    const accessOptions = remoteAccessOptions(p);
    const user = str(p, 'username');
    if (user !== undefined && repo !== undefined && !isOciLayoutRef(repo)) {
      const colon = user.indexOf(':');
      if (colon > 0) {
        const host = parseReference(`${repo}:x`).registry;
        const byHost = staticCredentials({ [host]: { username: user.slice(0, colon), password: user.slice(colon + 1) } });
        accessOptions.credentials = accessOptions.credentials ? chainCredentials(byHost, accessOptions.credentials) : byHost;
      }
    }
    accessOptions.plainHttp = plainHttp;
    const access = new RemoteAccess(accessOptions);
    const dbType = str(p, 'db-type');
    const dbStr = str(p, 'db-str');
    const cache = flag(p, 'no-db')
      ? undefined
      : await openConversionCache({
          ...(dbType !== undefined ? { dbType } : {}),
          ...(dbStr !== undefined ? { dbStr } : {}),
          sqlitePath: str(p, 'db') ?? join(workDir, 'conversion-cache.db'),
        });
    try {
      const src = await openImageEndpoint(refs.src, { access, plainHttp });
      let dstRef = refs.dst;
      if (flag(p, 'no-upload')) {
        const tag = isOciLayoutRef(dstRef) ? parseOciLayoutRef(dstRef).reference : parseReference(dstRef).tag;
        dstRef = `oci:${join(workDir, 'output')}${tag !== undefined ? `:${tag}` : ''}`;
      }
      const dst = await openImageEndpoint(dstRef, { access, plainHttp, create: true });
      const t0 = performance.now();
      // Ctrl-C / SIGTERM: stop the running apply, tear the device down, push nothing.
      const interrupt = new AbortController();
      const stop = (): void => interrupt.abort();
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      const r = await convertImage(src, dst, {
        signal: interrupt.signal,
        workDir,
        fsType: str(p, 'fstype') ?? 'ext4',
        vsizeGb: vsize,
        mkfs: !flag(p, 'no-mkfs'),
        ...(str(p, 'base-layer') !== undefined ? { baseLayer: str(p, 'base-layer') as string } : {}),
        algorithm: zfile.algorithm,
        blockSize: zfile.blockSize,
        oci: flag(p, 'oci'),
        concurrency,
        dumpManifest: flag(p, 'dump-manifest'),
        reserve: flag(p, 'reserve'),
        ...(cache !== undefined ? { cache } : {}),
        access,
        onEvent: progressPrinter(io, flag(p, 'json')),
      }).finally(() => {
        process.off('SIGINT', stop);
        process.off('SIGTERM', stop);
      });
      const seconds = ((performance.now() - t0) / 1000).toFixed(1);
      const summary = {
        type: 'result',
        target: dst.name,
        digest: r.descriptor.digest,
        mediaType: r.descriptor.mediaType,
        manifests: r.manifests,
        layersConverted: r.layersConverted,
        layersReused: r.layersReused,
        blobsUploaded: r.blobsUploaded,
        blobsMounted: r.blobsMounted,
        blobsPresent: r.blobsPresent,
        bytesUploaded: r.bytesUploaded,
        seconds: Number(seconds),
      };
      if (flag(p, 'json')) io.out(`${JSON.stringify(summary)}\n`);
      else {
        io.out(
          `${dst.name}: ${r.descriptor.digest} (${r.manifests} manifest${r.manifests === 1 ? '' : 's'}; ${r.layersConverted} layers converted, ` +
            `${r.layersReused} reused from the cache; ${r.blobsUploaded} blobs uploaded, ${r.blobsMounted} mounted, ${r.blobsPresent} already present; ${seconds} s)\n`,
        );
      }
    } finally {
      await cache?.close();
      await access.close();
    }
  },
};
