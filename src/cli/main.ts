/**
 * `obd` entry point: dispatches to one file per command and maps errors to exit codes
 * (the only place that does).
 */
import { ObdError } from '../io/errors.ts';
import type { Command } from './command.ts';
import { exitCodeOf } from './exit-code.ts';
import type { CliIo } from './io.ts';
import { zfileCommand } from './commands/zfile.ts';
import { createCommand } from './commands/create.ts';
import { writeCommand } from './commands/write.ts';
import { trimCommand } from './commands/trim.ts';
import { commitCommand } from './commands/commit.ts';
import { mergeCommand } from './commands/merge.ts';
import { exportCommand } from './commands/export.ts';
import { infoCommand } from './commands/info.ts';
import { demoCommand } from './commands/demo.ts';
import { selftestCommand } from './commands/selftest.ts';
import { pushCommand } from './commands/push.ts';
import { configCommand } from './commands/config.ts';
import { snapshotterCommand } from './commands/snapshotter.ts';
import { attachCommand } from './commands/attach.ts';
import { mountCommand } from './commands/mount.ts';
import { umountCommand, detachCommand } from './commands/umount.ts';
import { convertCommand } from './commands/convert.ts';
import { applyCommand } from './commands/apply.ts';
import { serveFuseCommand } from './commands/serve-fuse.ts';
import { rpullCommand } from './commands/rpull.ts';

export const COMMANDS: readonly Command[] = [
  demoCommand,
  selftestCommand,
  zfileCommand,
  createCommand,
  writeCommand,
  trimCommand,
  commitCommand,
  mergeCommand,
  exportCommand,
  infoCommand,
  pushCommand,
  configCommand,
  snapshotterCommand,
  attachCommand,
  detachCommand,
  mountCommand,
  umountCommand,
  convertCommand,
  applyCommand,
  serveFuseCommand,
  rpullCommand,
];

function help(): string {
  const lines = COMMANDS.map((c) => `  ${c.name.padEnd(8)} ${c.summary}`);
  return `usage: obd COMMAND [ARGS]\n\ncommands:\n${lines.join('\n')}\n\nobd COMMAND --help shows a command's usage\n`;
}

/** Runs `obd` with `argv` (without the program name); resolves with the exit code. */
export async function main(argv: string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out(help());
    return name === undefined ? 2 : 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (command === undefined) {
    io.err(`obd: unknown command '${name}'\n${help()}`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    io.out(`usage: ${command.usage}\n`);
    return 0;
  }
  try {
    await command.run(rest, io);
    return 0;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    io.err(`obd ${name}: ${message}\n`);
    if (!(e instanceof ObdError) && process.env['OBD_DEBUG'] && e instanceof Error) io.err(`${e.stack}\n`);
    return exitCodeOf(e);
  }
}
