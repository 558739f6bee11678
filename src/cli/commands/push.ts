import type { Command } from '../command.ts';
import { parse } from '../args.ts';
import { REMOTE_OPTIONS, plainHttpHosts, remoteAccess } from '../remote-options.ts';
import { openImageEndpoint } from '../../image/image-endpoint.ts';
import { copyImage } from '../../image/copy-image.ts';

const usage = 'obd push SRC DST [--plain-http HOST] [--insecure HOST] [--cred-file F] [--docker-config F]   (SRC, DST: registry references or oci:DIR:TAG)';

export const pushCommand: Command = {
  name: 'push',
  summary: 'copy an image (with every platform) between registries and local OCI layouts',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: REMOTE_OPTIONS, usage, min: 2, max: 2 });
    const [srcRef, dstRef] = p.positionals as [string, string];
    const access = remoteAccess(p);
    try {
      const plainHttp = plainHttpHosts(p);
      const src = await openImageEndpoint(srcRef, { access, plainHttp });
      const dst = await openImageEndpoint(dstRef, { access, plainHttp, create: true });
      const r = await copyImage(src, dst);
      io.out(`${dst.name}: ${r.descriptor.digest} (${r.blobsCopied} blobs copied, ${r.bytesCopied} bytes; ${r.blobsSkipped} already present)\n`);
    } finally {
      await access.close();
    }
  },
};
