import type { Command } from '../command.ts';
import { parse } from '../args.ts';
import { ATTACH_OPTIONS, attachCommand } from './attach.ts';

const usage = 'obd mount CONFIG|IMAGE DIR [--fstype ext4] [--rw --upper DIR] [--plain-http HOST] ...';

export const mountCommand: Command = {
  name: 'mount',
  summary: 'attach a device in the background and mount its file system on DIR',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: ATTACH_OPTIONS, usage, min: 2, max: 2 });
    const [target, dir] = p.positionals as [string, string];
    const rest = argv.filter((a) => a !== target && a !== dir);
    await attachCommand.run([target, '--mount', dir, '--background', ...rest], io);
  },
};
