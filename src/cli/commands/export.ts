import type { Command } from '../command.ts';
import { parse, flag } from '../args.ts';
import { readDeviceConfig } from '../../image/device-config.ts';
import { openDevice } from '../../device/open-device.ts';
import { exportRaw } from '../../device/export-raw.ts';

const usage = 'obd export CONFIG OUT.raw [-f]';

export const exportCommand: Command = {
  name: 'export',
  summary: 'write the merged virtual disk of a device config as a sparse raw file',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: { force: { type: 'boolean', short: 'f' } }, usage, min: 2, max: 2 });
    const [config, out] = p.positionals as [string, string];
    const stack = await openDevice(await readDeviceConfig(config));
    try {
      const r = await exportRaw(stack, out, { overwrite: flag(p, 'force') });
      io.out(`${out}: ${r.size} bytes, ${r.dataBytes} bytes of data\n`);
    } finally {
      await stack.close();
    }
  },
};
