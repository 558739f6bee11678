/** Runs the system tools the FUSE frontend needs (mount, umount), optionally with an fd as the child's fd 3. */
import { spawn } from 'node:child_process';

/** Default limit for one command. */
export const COMMAND_TIMEOUT_MS = 10_000;

export interface CommandResult {
  /** Exit code; null when killed (timeout) or not started. */
  code: number | null;
  /** stdout and stderr, trimmed. */
  output: string;
}

/** Runs `argv` with `fd` as its fd 3 (when given), bounded by a timeout; never rejects. */
export function runWithFd(argv: string[], options: { fd?: number; timeoutMs?: number } = {}): Promise<CommandResult> {
  const timeoutMs = options.timeoutMs ?? COMMAND_TIMEOUT_MS;
  return new Promise((resolve) => {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'pipe', 'pipe'];
    if (options.fd !== undefined) stdio.push(options.fd);
    const child = spawn(argv[0] as string, argv.slice(1), { stdio });
    let output = '';
    child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
    const timer = setTimeout(() => {
      output += `(killed after ${timeoutMs} ms)`;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      resolve({ code: null, output: e.message });
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output: output.trim() });
    });
  });
}
