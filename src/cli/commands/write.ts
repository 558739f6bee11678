import { readFile } from 'node:fs/promises';
import type { Command } from '../command.ts';
import { parse, integer } from '../args.ts';
import { openWritableLayer } from '../../formats/lsmt/writable-layer.ts';

const usage = 'obd write DATA INDEX OFFSET FILE   (OFFSET and the size of FILE: multiples of 512)';

export const writeCommand: Command = {
  name: 'write',
  summary: 'write the bytes of FILE into a writable layer at OFFSET',
  usage,
  async run(argv) {
    const p = parse(argv, { options: {}, usage, min: 4, max: 4 });
    const [data, index, offset, file] = p.positionals as [string, string, string, string];
    const bytes = await readFile(file);
    const layer = await openWritableLayer({ data, index });
    try {
      await layer.write(bytes, integer(offset, 'OFFSET'));
      await layer.flush();
    } finally {
      await layer.close();
    }
  },
};
