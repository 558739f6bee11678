/**
 * The Node options a child `node` process of ours is started with: this process's,
 * without those that belong to this process only — the test runner's (`--test…`), the
 * inspector's (`--inspect…`) and the CPU profiler's (`--cpu-prof…`) — each dropped with
 * its value when that is a separate argument (`--test-name-pattern PATTERN`: a value left
 * behind would become the child's script).
 *
 * @example
 * ```ts
 * // process.execArgv = ['--import', 'tsx', '--test-name-pattern', 'mounts']
 * childExecArgv(); // ['--import', 'tsx']
 * ```
 */

const OWN = /^--(test|inspect|cpu-prof)/;
/** Those of them that take a value. */
const WITH_VALUE = new Set([
  '--test-name-pattern',
  '--test-skip-pattern',
  '--test-reporter',
  '--test-reporter-destination',
  '--test-concurrency',
  '--test-timeout',
  '--test-shard',
  '--test-coverage-include',
  '--test-coverage-exclude',
  '--inspect-port',
  '--cpu-prof-dir',
  '--cpu-prof-name',
  '--cpu-prof-interval',
]);

export function childExecArgv(execArgv: readonly string[] = process.execArgv): string[] {
  const out: string[] = [];
  for (let i = 0; i < execArgv.length; i++) {
    const a = execArgv[i] as string;
    if (!OWN.test(a)) {
      out.push(a);
      continue;
    }
    if (!a.includes('=') && WITH_VALUE.has(a)) i++; // its value
  }
  return out;
}
