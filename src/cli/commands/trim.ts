import type { Command } from '../command.ts';
import { parse, integer } from '../args.ts';
import { openWritableLayer } from '../../formats/lsmt/writable-layer.ts';

const usage = 'obd trim DATA INDEX OFFSET LENGTH   (multiples of 512)';

export const trimCommand: Command = {
  name: 'trim',
  summary: 'discard a byte range of a writable layer (reads as zeros)',
  usage,
  async run(argv) {
    const p = parse(argv, { options: {}, usage, min: 4, max: 4 });
    const [data, index, offset, length] = p.positionals as [string, string, string, string];
    const layer = await openWritableLayer({ data, index });
    try {
      await layer.trim(integer(offset, 'OFFSET'), integer(length, 'LENGTH'));
      await layer.flush();
    } finally {
      await layer.close();
    }
  },
};
