/**
 * Flag parsing for the CLI: `node:util` parseArgs in strict mode, with errors turned
 * into `InvalidArgumentError` that name the command and show its usage.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { InvalidArgumentError } from '../io/errors.ts';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface Parsed {
  values: Record<string, string | boolean | string[] | boolean[] | undefined>;
  positionals: string[];
}

export function parse(argv: string[], spec: { options: OptionSpec; usage: string; min: number; max: number }): Parsed {
  let parsed: Parsed;
  try {
    parsed = parseArgs({ args: argv, options: spec.options, allowPositionals: true, strict: true }) as Parsed;
  } catch (e) {
    throw new InvalidArgumentError(`${(e as Error).message}\nusage: ${spec.usage}`, { cause: e });
  }
  const n = parsed.positionals.length;
  if (n < spec.min || n > spec.max) {
    throw new InvalidArgumentError(`Expected ${spec.min === spec.max ? spec.min : `${spec.min} to ${spec.max}`} arguments, got ${n}\nusage: ${spec.usage}`);
  }
  return parsed;
}

export function str(p: Parsed, name: string): string | undefined {
  const v = p.values[name];
  return typeof v === 'string' ? v : undefined;
}

export function flag(p: Parsed, name: string): boolean {
  return p.values[name] === true;
}

/** Parses a non-negative integer argument, naming it in the error. */
export function integer(text: string, what: string): number {
  if (!/^\d+$/.test(text)) throw new InvalidArgumentError(`Invalid ${what} '${text}': expected a non-negative integer`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new InvalidArgumentError(`Invalid ${what} '${text}': too large`);
  return n;
}

/** ZFile options shared by zfile, commit and merge: --algorithm, --bs (KiB). */
export const ZFILE_OPTIONS: OptionSpec = {
  algorithm: { type: 'string' },
  bs: { type: 'string' },
};

export function zfileOptions(p: Parsed): { algorithm: 'lz4' | 'zstd'; blockSize: number } {
  const algorithm = str(p, 'algorithm') ?? 'lz4';
  if (algorithm !== 'lz4' && algorithm !== 'zstd') {
    throw new InvalidArgumentError(`Invalid --algorithm '${algorithm}': expected lz4 or zstd`);
  }
  const bs = integer(str(p, 'bs') ?? '4', '--bs');
  if (![4, 8, 16, 32, 64].includes(bs)) throw new InvalidArgumentError(`Invalid --bs ${bs}: expected 4, 8, 16, 32 or 64 (KiB)`);
  return { algorithm, blockSize: bs * 1024 };
}
