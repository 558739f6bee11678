import type { Command } from '../command.ts';
import { parse, flag, str, ZFILE_OPTIONS, zfileOptions } from '../args.ts';
import { readDeviceConfig } from '../../image/device-config.ts';
import { openDevice } from '../../device/open-device.ts';
import { mergeStackToFile } from '../../device/merge-stack.ts';

const usage = 'obd merge CONFIG OUT [--no-compress|--compress=false] [-t] [--algorithm lz4|zstd] [--bs KiB] [-f]';

export const mergeCommand: Command = {
  name: 'merge',
  summary: 'flatten every layer of a device config into one sealed blob (ZFile by default)',
  usage,
  async run(argv) {
    // Upstream spells the switch --compress=false; parseArgs has no negated booleans.
    const args = argv.map((a) => (a === '--compress=false' ? '--no-compress' : a === '--compress=true' ? '--compress' : a));
    const p = parse(args, {
      options: {
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
    const stack = await openDevice(await readDeviceConfig(config));
    try {
      await mergeStackToFile(stack, out, {
        zfile: flag(p, 'no-compress') ? undefined : { ...z, verify: true, rewriteHeader: false },
        tar: flag(p, 'tar'),
        overwrite: flag(p, 'force') || str(p, 'force') !== undefined,
      });
    } finally {
      await stack.close();
    }
  },
};
