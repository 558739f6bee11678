/**
 * bench/fuzz: at least 100,000 mutated inputs over every vector kind (see
 * test/support/fuzz.ts). Prints the failures and `RESULT fuzz/failures <n>` (must be 0).
 * Args: [COUNT] [SEED].
 */
import { fuzz } from '../test/support/fuzz.ts';

const count = Number(process.argv[2] ?? 100_000);
const seed = Number(process.argv[3] ?? 20261127);
const t0 = performance.now();
const r = await fuzz({ count, seed });
const secs = (performance.now() - t0) / 1000;
for (const f of r.failures.slice(0, 20)) console.log(`FAIL ${f.seed} #${f.index} [${f.what}]: ${f.problem}`);
console.log(`fuzz: ${r.runs} inputs in ${secs.toFixed(1)} s: ${r.typed} typed errors, ${r.ok} successful reads, ${r.failures.length} failures`);
console.log(`RESULT fuzz/inputs ${r.runs}`);
console.log(`RESULT fuzz/failures ${r.failures.length}`);
