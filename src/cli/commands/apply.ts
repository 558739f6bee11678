/**
 * `obd apply INPUT CONFIG [--mkfs]` (upstream `overlaybd-apply`): applies an OCI layer
 * tar (gzip, zstd or plain) onto the file system of the device a `config.v1.json`
 * describes, writing into its upper layer.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rmdir } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Command } from '../command.ts';
import { parse, flag, str } from '../args.ts';
import { DataCorruptionError, FailedPreconditionError } from '../../io/errors.ts';
import { readDeviceConfig } from '../../image/device-config.ts';
import { applyOnDevice } from '../../convert/apply-on-device.ts';
import { SubprocessApplier } from '../../convert/subprocess-applier.ts';
import { DEFAULT_RUN_DIR } from '../../attach/session.ts';

const usage = 'obd apply INPUT CONFIG [--mkfs] [--fstype ext4] [--checksum sha256:HEX] [--run-dir DIR] [--verbose]';

export const applyCommand: Command = {
  name: 'apply',
  summary: "apply an OCI layer tar onto a device config's writable upper (overlaybd-apply)",
  usage,
  async run(argv, io) {
    const p = parse(argv, {
      options: {
        mkfs: { type: 'boolean' },
        fstype: { type: 'string' },
        checksum: { type: 'string' },
        'run-dir': { type: 'string' },
        verbose: { type: 'boolean' },
        service_config_path: { type: 'string' },
      },
      usage,
      min: 2,
      max: 2,
    });
    const [input, configPath] = p.positionals as [string, string];
    const cfg = await readDeviceConfig(configPath);
    if (cfg.upper === undefined) throw new FailedPreconditionError(`Cannot apply onto ${configPath}: the config has no writable upper layer`);
    const runDir = resolve(str(p, 'run-dir') ?? DEFAULT_RUN_DIR);
    const mountpoint = await mkdtemp(join(dirname(resolve(cfg.upper.data)), '.apply-'));
    const fsType = str(p, 'fstype');
    const applier = new SubprocessApplier();
    try {
      const stats = await applyOnDevice(createReadStream(input), {
        cfg,
        mountpoint,
        mkfs: flag(p, 'mkfs'),
        ...(fsType !== undefined ? { fsType } : {}),
        runDir,
        applier,
        applyOptions: { onWarning: (w) => io.err(`warning: ${w.entry}: ${w.message}\n`) },
      });
      const checksum = str(p, 'checksum');
      if (checksum !== undefined && checksum !== stats.diffId) {
        throw new DataCorruptionError(`Cannot apply ${input}: the uncompressed layer hashes to ${stats.diffId}, not ${checksum}`);
      }
      io.out(`applied ${input}: ${stats.entries} entries, ${stats.files} files (${stats.fileBytes} bytes), ${stats.whiteouts + stats.opaques} whiteouts; diff_id ${stats.diffId}\n`);
    } finally {
      await applier.close();
      await rmdir(mountpoint).catch(() => {});
    }
  },
};
