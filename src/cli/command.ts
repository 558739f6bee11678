import type { CliIo } from './io.ts';

/** One CLI command: parses its flags, calls the library, writes to `io`. */
export interface Command {
  name: string;
  summary: string;
  usage: string;
  run(argv: string[], io: CliIo): Promise<void>;
}
