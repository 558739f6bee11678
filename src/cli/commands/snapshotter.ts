import type { Command } from '../command.ts';
import { parse, str } from '../args.ts';
import { InvalidArgumentError } from '../../io/errors.ts';
import { runSnapshotterDaemon } from '../../snapshotter/daemon.ts';
import { DEFAULT_CONFIG_PATH } from '../../snapshotter/config.ts';
import { sessionDeviceMounter } from '../session-mounter.ts';
import { memoryIo } from '../io.ts';
import { rpullHere } from './rpull.ts';
import { preloadRpull } from '../../snapshotter/rpull.ts';

const usage = 'obd snapshotter [CONFIG | --config CONFIG] [--run-dir DIR]   (CONFIG default /etc/overlaybd-snapshotter/config.json)';

/**
 * `obd snapshotter [CONFIG]`: upstream's `overlaybd-snapshotter` — the config file path is
 * its only argument (or `--config`), devices are served by `obd attach` sessions recorded
 * in `--run-dir`, so they outlive a restart of the daemon.
 */
export const snapshotterCommand: Command = {
  name: 'snapshotter',
  summary: "run the containerd proxy snapshotter (upstream's config file; see docs/snapshotter.md)",
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { config: { type: 'string' }, 'run-dir': { type: 'string' } }, usage, min: 0, max: 1 });
    const runDir = str(p, 'run-dir');
    const [positional] = p.positionals;
    const option = str(p, 'config');
    if (positional !== undefined && option !== undefined) throw new InvalidArgumentError(`Cannot start the snapshotter: config given twice (${positional} and --config ${option})\nusage: ${usage}`);
    await runSnapshotterDaemon(positional ?? option ?? DEFAULT_CONFIG_PATH, {
      deviceMounter: sessionDeviceMounter(runDir !== undefined ? { runDir } : {}),
      // `obd rpull` runs here when it finds the pull socket (src/snapshotter/pull-socket.ts).
      pullHandler: async (pullArgv) => {
        const out = memoryIo();
        await rpullHere(pullArgv, out);
        return out.stdout;
      },
      onReady: (info: unknown) => {
        io.out(`snapshotter: serving ${JSON.stringify(info)}\n`);
        // Loaded before the first pull needs them, off the start path.
        setTimeout(() => void preloadRpull().catch(() => undefined), 100).unref();
      },
    });
  },
};
