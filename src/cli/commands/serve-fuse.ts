/**
 * `obd serve-fuse` (internal): the serving process of a supervised `obd attach`. It is
 * started by the supervisor with the connection's `/dev/fuse` as fd 3 and a node IPC
 * channel, opens the device config the supervisor sends, serves it, and exits when the
 * connection ends. Takes the registry and cache flags of `obd attach`.
 */
import type { Command } from '../command.ts';
import { parse } from '../args.ts';
import { REMOTE_OPTIONS, remoteAccess } from '../remote-options.ts';
import { FailedPreconditionError } from '../../io/errors.ts';
import { parseDeviceConfig } from '../../image/device-config.ts';
import { openDevice } from '../../device/open-device.ts';
import { runFuseServerChild } from '../../attach/serve-fuse-child.ts';
import { DEFAULT_READERS } from '../../fuse/serve-fuse-fd.ts';
import { READ_DEVICE_MODULE, localReadsFor } from '../../attach/local-reads.ts';
import { downloadSettings, replayReaderSettings } from '../../device/trace-prefetcher.ts';

const usage = 'obd serve-fuse [--plain-http HOST] [--cache-dir D] ...   (internal: started by obd attach)';

export const serveFuseCommand: Command = {
  name: 'serve-fuse',
  summary: '(internal) the serving process of obd attach: serves a device on an inherited /dev/fuse',
  usage,
  async run(argv) {
    const p = parse(argv, { options: REMOTE_OPTIONS, usage, min: 0, max: 0 });
    const access = remoteAccess(p);
    try {
      const code = await runFuseServerChild({
        open: async (spec) => {
          // Validated like a config file: the message crossed a process boundary.
          const cfg = parseDeviceConfig(JSON.stringify(spec), '/');
          return openDevice(cfg, { remote: access.opener(await downloadSettings(cfg), await replayReaderSettings(cfg)) });
        },
        localReads: (spec) => localReadsFor(parseDeviceConfig(JSON.stringify(spec), '/')),
        prepare: [READ_DEVICE_MODULE],
        parkedReaders: DEFAULT_READERS,
        warm: () => access.warm(),
      });
      if (code !== 0) throw new FailedPreconditionError('Cannot serve FUSE: the server stopped before the connection ended');
    } finally {
      await access.close();
    }
  },
};
