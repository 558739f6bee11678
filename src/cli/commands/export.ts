import type { Command } from '../command.ts';
import { parse, flag } from '../args.ts';
import { REMOTE_OPTIONS, plainHttpHosts, remoteAccess } from '../remote-options.ts';
import { openTarget } from '../../device/open-target.ts';
import { exportRaw } from '../../device/export-raw.ts';

const usage = 'obd export CONFIG|IMAGE OUT.raw [-f] [--cache-dir D] [--plain-http HOST] ...';

export const exportCommand: Command = {
  name: 'export',
  summary: 'write the merged virtual disk of a device config or image as a sparse raw file',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { ...REMOTE_OPTIONS, force: { type: 'boolean', short: 'f' } }, usage, min: 2, max: 2 });
    const [target, out] = p.positionals as [string, string];
    const access = remoteAccess(p);
    try {
      const opened = await openTarget(target, { access, plainHttp: plainHttpHosts(p) });
      try {
        const r = await exportRaw(opened.device, out, { overwrite: flag(p, 'force') });
        const s = access.stats();
        io.out(`${out}: ${r.size} bytes, ${r.dataBytes} bytes of data${s.requests > 0 ? `; ${s.requests} range requests, ${s.bytesFetched} bytes fetched` : ''}\n`);
      } finally {
        await opened.close();
      }
    } finally {
      await access.close();
    }
  },
};
