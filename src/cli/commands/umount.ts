import type { Command } from '../command.ts';
import { parse, str } from '../args.ts';
import { findSession, stopSession, DEFAULT_RUN_DIR } from '../../attach/session.ts';

const usage = 'obd umount DIR | obd detach /dev/loopN|TARGET';

function stopper(name: string, summary: string): Command {
  return {
    name,
    summary,
    usage,
    async run(argv, io) {
      const p = parse(argv, { options: { 'run-dir': { type: 'string' } }, usage, min: 1, max: 1 });
      const record = await findSession(p.positionals[0] as string, str(p, 'run-dir') ?? DEFAULT_RUN_DIR);
      await stopSession(record);
      io.out(`${record.mountpoint ?? record.blockDevice}: detached\n`);
    },
  };
}

export const umountCommand = stopper('umount', 'unmount a file system mounted by obd mount and detach its device');
export const detachCommand = stopper('detach', 'stop serving a device attached by obd attach');
