import type { Command } from '../command.ts';
import { parse, flag, ZFILE_OPTIONS, zfileOptions } from '../args.ts';
import { compressFile, compressStream, decompressFile, verifyZFile } from '../../formats/layer-files.ts';
import { InvalidArgumentError } from '../../io/errors.ts';

const usage = 'obd zfile [SRC] DST [-x] [-t] [--algorithm lz4|zstd] [--bs KiB] [-f] [--no-verify] | obd zfile --verify SRC';

export const zfileCommand: Command = {
  name: 'zfile',
  summary: 'compress a file into a ZFile (-x: decompress; --verify: check block CRCs)',
  usage,
  async run(argv, io) {
    const p = parse(argv, {
      options: {
        ...ZFILE_OPTIONS,
        extract: { type: 'boolean', short: 'x' },
        tar: { type: 'boolean', short: 't' },
        force: { type: 'boolean', short: 'f' },
        verify: { type: 'boolean' },
        'no-verify': { type: 'boolean' },
        verbose: { type: 'boolean' },
      },
      usage,
      min: 1,
      max: 2,
    });
    const [src, dst] = p.positionals as [string, string | undefined];
    if (flag(p, 'verify')) {
      const r = await verifyZFile(src);
      io.out(`${src}: ${r.blocks} blocks verified\n`);
      return;
    }
    const options = { ...zfileOptions(p), verify: !flag(p, 'no-verify'), tar: flag(p, 'tar'), overwrite: flag(p, 'force') };
    if (dst === undefined) {
      // Upstream form `overlaybd-zfile DST`: compress standard input.
      if (flag(p, 'extract')) throw new InvalidArgumentError(`-x needs SRC and DST\nusage: ${usage}`);
      await compressStream(io.stdin(), src, options);
      return;
    }
    if (flag(p, 'extract')) {
      await decompressFile(src, dst, { overwrite: flag(p, 'force') });
      return;
    }
    await compressFile(src, dst, options);
  },
};
