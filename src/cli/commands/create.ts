import type { Command } from '../command.ts';
import { parse, flag, str, integer } from '../args.ts';
import { createWritableLayer } from '../../formats/lsmt/writable-layer.ts';
import { createSparseLayer } from '../../formats/lsmt/sparse-layer.ts';

const usage = 'obd create DATA INDEX VSIZE_GB [-s] [-u PARENT_UUID]';

export const createCommand: Command = {
  name: 'create',
  summary: 'create a writable layer (append mode; -s sparse)',
  usage,
  async run(argv, io) {
    const p = parse(argv, {
      options: {
        sparse: { type: 'boolean', short: 's' },
        'parent-uuid': { type: 'string', short: 'u' },
        verbose: { type: 'boolean' },
      },
      usage,
      min: 3,
      max: 3,
    });
    const [data, index, vsize] = p.positionals as [string, string, string];
    const virtualSize = integer(vsize, 'VSIZE_GB') * 2 ** 30;
    const parentUuid = str(p, 'parent-uuid');
    const options = { data, index, virtualSize, ...(parentUuid !== undefined ? { parentUuid } : {}) };
    const layer = flag(p, 'sparse') ? await createSparseLayer(options) : await createWritableLayer(options);
    io.out(`created ${flag(p, 'sparse') ? 'sparse ' : ''}writable layer ${layer.uuid} (${vsize} GiB)\n`);
    await layer.close();
  },
};
