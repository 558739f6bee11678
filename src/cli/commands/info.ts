import type { Command } from '../command.ts';
import { parse, flag } from '../args.ts';
import { stat } from 'node:fs/promises';
import { inspectBlob, inspectReader, type BlobInfo } from '../../formats/inspect-blob.ts';
import { REMOTE_OPTIONS, plainHttpHosts, remoteAccess } from '../remote-options.ts';
import { openImageEndpoint } from '../../image/image-endpoint.ts';
import { resolveManifest } from '../../image/image-device-config.ts';
import { isOciLayoutRef } from '../../image/oci-layout.ts';
import type { HeaderTrailer } from '../../formats/lsmt/header-trailer.ts';

const usage = 'obd info BLOB|IMAGE [--json] [--plain-http HOST] ...   (IMAGE: every layer, read remotely)';

function ht(h: HeaderTrailer): Record<string, unknown> {
  return {
    flags: `0x${h.flags.toString(16)}`,
    indexOffset: h.indexOffset,
    indexSize: h.indexSize,
    virtualSize: h.virtualSize,
    uuid: h.uuid,
    parentUuid: h.parentUuid,
    version: `${h.version}.${h.subVersion}`,
    userTag: new TextDecoder().decode(h.userTag),
  };
}

function toJson(info: BlobInfo): unknown {
  return {
    ...info,
    zfile: info.zfile && { ...info.zfile, header: undefined, trailer: undefined },
    lsmt: info.lsmt && {
      kind: info.lsmt.kind,
      header: ht(info.lsmt.header),
      trailer: info.lsmt.trailer && ht(info.lsmt.trailer),
      index: info.lsmt.index,
    },
  };
}

function text(info: BlobInfo): string {
  const lines = [`${info.path}: ${info.size} bytes`];
  if (info.tar) lines.push(`tar wrapper: payload ${info.tar.payloadSize} bytes at offset ${info.tar.payloadOffset}`);
  const z = info.zfile;
  if (z) {
    lines.push(
      `zfile: ${z.algorithm}, ${z.blockSize / 1024} KiB blocks, ${z.verify ? 'with' : 'without'} block CRCs, ` +
        `${z.indexSize} blocks, ${z.originalFileSize} bytes decoded (ratio ${(z.compressedSize / Math.max(1, z.originalFileSize)).toFixed(3)}), index from the ${z.source}`,
    );
  }
  const l = info.lsmt;
  if (l) {
    const rec = l.trailer ?? l.header;
    lines.push(`lsmt: ${l.kind}, virtual size ${rec.virtualSize} bytes, uuid ${rec.uuid}, parent ${rec.parentUuid}`);
    lines.push(`  header flags 0x${l.header.flags.toString(16)}${l.trailer ? `, trailer flags 0x${l.trailer.flags.toString(16)}` : ''}, version ${rec.version}.${rec.subVersion}`);
    const tag = new TextDecoder().decode(rec.userTag);
    if (tag !== '') lines.push(`  message: ${tag}`);
    if (l.trailer) lines.push(`  index at ${l.trailer.indexOffset}, ${l.trailer.indexSize} entries stored`);
    if (l.index) lines.push(`  ${l.index.valid} valid entries (${l.index.zeroed} zeroed), ${l.index.dataBytes} bytes of data`);
  }
  if (info.note) lines.push(`note: ${info.note}`);
  return `${lines.join('\n')}\n`;
}

export const infoCommand: Command = {
  name: 'info',
  summary: 'show the tar wrapper, ZFile and LSMT records and index statistics of a blob',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { ...REMOTE_OPTIONS, json: { type: 'boolean' } }, usage, min: 1, max: 1 });
    const target = p.positionals[0] as string;
    const show = (info: BlobInfo): void => io.out(flag(p, 'json') ? `${JSON.stringify(toJson(info), null, 2)}\n` : text(info));
    if (!isOciLayoutRef(target) && (await stat(target).catch(() => undefined))?.isFile() === true) {
      show(await inspectBlob(target));
      return;
    }
    const access = remoteAccess(p);
    try {
      const endpoint = await openImageEndpoint(target, { access, plainHttp: plainHttpHosts(p) });
      const { descriptor, manifest } = await resolveManifest(endpoint);
      if (!flag(p, 'json')) io.out(`${endpoint.name}: manifest ${descriptor.digest}, ${manifest.layers.length} layers\n`);
      for (const layer of manifest.layers) show(await inspectReader(await endpoint.openBlob(layer), layer.digest));
    } finally {
      await access.close();
    }
  },
};
