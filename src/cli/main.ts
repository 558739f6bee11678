/**
 * `obd` entry point: dispatches to one file per command and maps errors to exit codes
 * (the only place that does).
 */
import { ObdError } from '../io/errors.ts';
import type { Command } from './command.ts';
import { exitCodeOf } from './exit-code.ts';
import type { CliIo } from './io.ts';

/** A command of the table: its name, and how to load it. */
export interface LazyCommand {
  name: string;
  load(): Promise<Command>;
}

/**
 * The commands, each loaded when it runs: a process pays only for the modules of its own
 * command (`obd attach`, `obd serve-fuse` and `obd rpull` sit on a container's start path).
 */
export const COMMANDS: readonly LazyCommand[] = [
  { name: 'demo', load: async () => (await import('./commands/demo.ts')).demoCommand },
  { name: 'selftest', load: async () => (await import('./commands/selftest.ts')).selftestCommand },
  { name: 'zfile', load: async () => (await import('./commands/zfile.ts')).zfileCommand },
  { name: 'create', load: async () => (await import('./commands/create.ts')).createCommand },
  { name: 'write', load: async () => (await import('./commands/write.ts')).writeCommand },
  { name: 'trim', load: async () => (await import('./commands/trim.ts')).trimCommand },
  { name: 'commit', load: async () => (await import('./commands/commit.ts')).commitCommand },
  { name: 'merge', load: async () => (await import('./commands/merge.ts')).mergeCommand },
  { name: 'export', load: async () => (await import('./commands/export.ts')).exportCommand },
  { name: 'info', load: async () => (await import('./commands/info.ts')).infoCommand },
  { name: 'push', load: async () => (await import('./commands/push.ts')).pushCommand },
  { name: 'config', load: async () => (await import('./commands/config.ts')).configCommand },
  { name: 'snapshotter', load: async () => (await import('./commands/snapshotter.ts')).snapshotterCommand },
  { name: 'attach', load: async () => (await import('./commands/attach.ts')).attachCommand },
  { name: 'detach', load: async () => (await import('./commands/umount.ts')).detachCommand },
  { name: 'mount', load: async () => (await import('./commands/mount.ts')).mountCommand },
  { name: 'umount', load: async () => (await import('./commands/umount.ts')).umountCommand },
  { name: 'convert', load: async () => (await import('./commands/convert.ts')).convertCommand },
  { name: 'apply', load: async () => (await import('./commands/apply.ts')).applyCommand },
  { name: 'serve-fuse', load: async () => (await import('./commands/serve-fuse.ts')).serveFuseCommand },
  { name: 'rpull', load: async () => (await import('./commands/rpull.ts')).rpullCommand },
];

async function help(): Promise<string> {
  const loaded = await Promise.all(COMMANDS.map((c) => c.load()));
  const lines = loaded.map((c) => `  ${c.name.padEnd(8)} ${c.summary}`);
  return `usage: obd COMMAND [ARGS]\n\ncommands:\n${lines.join('\n')}\n\nobd COMMAND --help shows a command's usage\n`;
}

/** Runs `obd` with `argv` (without the program name); resolves with the exit code. */
export async function main(argv: string[], io: CliIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out(await help());
    return name === undefined ? 2 : 0;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (entry === undefined) {
    io.err(`obd: unknown command '${name}'\n${await help()}`);
    return 2;
  }
  const command = await entry.load();
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
