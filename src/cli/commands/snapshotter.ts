import type { Command } from '../command.ts';
import { parse, str } from '../args.ts';
import { runSnapshotterDaemon } from '../../snapshotter/daemon.ts';
import { sessionDeviceMounter } from '../session-mounter.ts';

const usage = 'obd snapshotter [--config /etc/overlaybd-snapshotter/config.json] [--run-dir DIR]';

export const snapshotterCommand: Command = {
  name: 'snapshotter',
  summary: "run the containerd proxy snapshotter (upstream's config file; see docs/snapshotter.md)",
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { config: { type: 'string' }, 'run-dir': { type: 'string' } }, usage, min: 0, max: 0 });
    const runDir = str(p, 'run-dir');
    const config = str(p, 'config');
    await runSnapshotterDaemon(config ?? '/etc/overlaybd-snapshotter/config.json', {
      deviceMounter: sessionDeviceMounter(runDir !== undefined ? { runDir } : {}),
      onReady: (info: unknown) => io.out(`snapshotter: serving ${JSON.stringify(info)}\n`),
    });
  },
};
