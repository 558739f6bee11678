/**
 * Runs the system tools attach needs (losetup, mount, umount, mkfs) with a time limit,
 * turning failures into typed errors that quote the tool's own message.
 */
import { spawn } from 'node:child_process';
import { FailedPreconditionError, UnavailableError } from '../io/errors.ts';

export interface CommandOutput {
  stdout: string;
  stderr: string;
}

export function runCommand(argv: string[], options: { timeoutMs?: number; what?: string } = {}): Promise<CommandOutput> {
  const what = options.what ?? argv.join(' ');
  return new Promise((resolve, reject) => {
    const child = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new UnavailableError(`Cannot ${what}: no answer within ${options.timeoutMs ?? 30000} ms`));
    }, options.timeoutMs ?? 30000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new FailedPreconditionError(`Cannot ${what}: ${e.message}`, { cause: e }));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else reject(new FailedPreconditionError(`Cannot ${what}: ${argv[0]} exited ${code}: ${(stderr || stdout).trim()}`));
    });
  });
}
