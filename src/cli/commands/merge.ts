import type { Command } from '../command.ts';
import { parse, flag, str, ZFILE_OPTIONS, zfileOptions } from '../args.ts';
import { REMOTE_OPTIONS, plainHttpHosts, remoteAccess } from '../remote-options.ts';
import { openTarget } from '../../device/open-target.ts';
import { mergeStackToFile } from '../../device/merge-stack.ts';

const usage = 'obd merge CONFIG|IMAGE OUT [--no-compress|--compress=false] [-t] [--algorithm lz4|zstd] [--bs KiB] [-f]';

export const mergeCommand: Command = {
  name: 'merge',
  summary: 'flatten every layer of a device config into one sealed blob (ZFile by default)',
  usage,
  async run(argv) {
    // Upstream spells the switch --compress=false; parseArgs has no negated booleans.
    const args = argv.map((a) => (a === '--compress=false' ? '--no-compress' : a === '--compress=true' ? '--compress' : a));
    const p = parse(args, {
      options: {
        ...REMOTE_OPTIONS,
        ...ZFILE_OPTIONS,
        compress: { type: 'boolean' },
        'no-compress': { type: 'boolean' },
        tar: { type: 'boolean', short: 't' },
        force: { type: 'boolean', short: 'f' },
        verbose: { type: 'boolean' },
      },
      usage,
      min: 2,
      max: 2,
    });
    const [config, out] = p.positionals as [string, string];
    const z = zfileOptions(p);
    const access = remoteAccess(p);
    const opened = await openTarget(config, { access, plainHttp: plainHttpHosts(p) }).catch(async (e: unknown) => {
      await access.close();
      throw e;
    });
    try {
      await mergeStackToFile(opened.device, out, {
        zfile: flag(p, 'no-compress') ? undefined : { ...z, verify: true, rewriteHeader: false },
        tar: flag(p, 'tar'),
        overwrite: flag(p, 'force') || str(p, 'force') !== undefined,
      });
    } finally {
      await opened.close();
      await access.close();
    }
  },
};
