import type { Command } from '../command.ts';
import { parse, flag, str, ZFILE_OPTIONS, zfileOptions } from '../args.ts';
import { InvalidArgumentError } from '../../io/errors.ts';
import { commitFile, commitSealedFile } from '../../formats/lsmt/commit-files.ts';
import { sealInPlace } from '../../formats/lsmt/seal.ts';

const usage =
  'obd commit DATA INDEX OUT [-z] [--algorithm lz4|zstd] [--bs KiB] [-t] [-f] [-m MSG] [--uuid U] [-p|--parent-uuid U]\n' +
  '       obd commit DATA INDEX --seal\n' +
  '       obd commit SEALED OUT --commit_sealed [-z ...]';

export const commitCommand: Command = {
  name: 'commit',
  summary: 'compact a writable layer into a sealed blob (-z ZFile, -t tar; --seal in place)',
  usage,
  async run(argv, io) {
    const p = parse(argv, {
      options: {
        ...ZFILE_OPTIONS,
        compress: { type: 'boolean', short: 'z' },
        tar: { type: 'boolean', short: 't' },
        force: { type: 'boolean', short: 'f' },
        message: { type: 'string', short: 'm' },
        uuid: { type: 'string' },
        'parent-uuid': { type: 'string', short: 'p' },
        seal: { type: 'boolean' },
        commit_sealed: { type: 'boolean' },
        'commit-sealed': { type: 'boolean' },
        compress_threads: { type: 'string' },
        verbose: { type: 'boolean' },
      },
      usage,
      min: 2,
      max: 3,
    });
    const pos = p.positionals;
    if (flag(p, 'seal')) {
      if (pos.length !== 2) throw new InvalidArgumentError(`--seal takes DATA INDEX\nusage: ${usage}`);
      await sealInPlace({ data: pos[0] as string, index: pos[1] as string });
      return;
    }
    if (!flag(p, 'compress') && (str(p, 'algorithm') !== undefined || str(p, 'bs') !== undefined)) {
      io.err('obd commit: --algorithm and --bs are ignored without -z\n');
    }
    const options = {
      zfile: flag(p, 'compress') ? { ...zfileOptions(p), verify: true, rewriteHeader: true } : undefined,
      tar: flag(p, 'tar'),
      overwrite: flag(p, 'force'),
      userTag: new TextEncoder().encode(str(p, 'message') ?? ''),
      uuid: str(p, 'uuid'),
      parentUuid: str(p, 'parent-uuid'),
    };
    if (flag(p, 'commit_sealed') || flag(p, 'commit-sealed')) {
      if (pos.length !== 2) throw new InvalidArgumentError(`--commit_sealed takes SEALED OUT\nusage: ${usage}`);
      await commitSealedFile(pos[0] as string, pos[1] as string, options);
      return;
    }
    if (pos.length !== 3) throw new InvalidArgumentError(`Expected DATA INDEX OUT\nusage: ${usage}`);
    await commitFile({ data: pos[0] as string, index: pos[1] as string }, pos[2] as string, options);
  },
};
