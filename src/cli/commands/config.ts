import { writeFile } from 'node:fs/promises';
import type { Command } from '../command.ts';
import { parse, str } from '../args.ts';
import { REMOTE_OPTIONS, plainHttpHosts, remoteAccess } from '../remote-options.ts';
import { openImageEndpoint } from '../../image/image-endpoint.ts';
import { imageDeviceConfig, serializeDeviceConfig } from '../../image/image-device-config.ts';

const usage = 'obd config IMAGE [OUT.json] [--result-file F] [--plain-http HOST] ...   (IMAGE: registry reference or oci:DIR:TAG)';

export const configCommand: Command = {
  name: 'config',
  summary: "write the device config (config.v1.json) of an overlaybd image",
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { ...REMOTE_OPTIONS, 'result-file': { type: 'string' } }, usage, min: 1, max: 2 });
    const [ref, out] = p.positionals as [string, string | undefined];
    const access = remoteAccess(p);
    try {
      const endpoint = await openImageEndpoint(ref, { access, plainHttp: plainHttpHosts(p) });
      const resultFile = str(p, 'result-file');
      const cfg = await imageDeviceConfig(endpoint, resultFile !== undefined ? { resultFile } : {});
      const text = `${serializeDeviceConfig(cfg)}\n`;
      if (out === undefined) io.out(text);
      else await writeFile(out, text, { mode: 0o600 });
    } finally {
      await access.close();
    }
  },
};
