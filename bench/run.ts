/**
 * `npm run bench -- NAME [ARGS]` runs bench/NAME.ts. Each bench prints its table and
 * final lines `RESULT NAME/<metric> <number>`.
 */
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const [name, ...rest] = process.argv.slice(2);
const available = readdirSync(here)
  .filter((f) => f.endsWith('.ts') && f !== 'run.ts')
  .map((f) => f.slice(0, -3));
if (name === undefined || !existsSync(join(here, `${name}.ts`))) {
  console.error(`usage: npm run bench -- NAME\navailable: ${available.join(', ')}`);
  process.exit(2);
}
process.argv = [process.argv[0] as string, join(here, `${name}.ts`), ...rest];
await import(join(here, `${name}.ts`));
