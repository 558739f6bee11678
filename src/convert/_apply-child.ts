/**
 * Child-process side of `SubprocessApplier`: applies the layer read from standard input
 * onto the directory named in `argv[2]` (JSON `{ rootDir, maxFileSize? }`) and reports
 * over the IPC channel: `progress`, `warning`, then one `result` or `error` message.
 */
import { DirectoryApplier } from './directory-applier.ts';
import type { ApplyOptions } from './layer-applier.ts';

interface ChildOptions {
  rootDir: string;
  maxFileSize?: number;
}

function send(message: object): Promise<void> {
  return new Promise((resolve) => {
    if (process.send === undefined) {
      resolve();
      return;
    }
    process.send(message, undefined, {}, () => resolve());
  });
}

async function run(): Promise<void> {
  const options = JSON.parse(process.argv[2] ?? '{}') as ChildOptions;
  const applyOptions: ApplyOptions = {
    onWarning: (w) => void send({ type: 'warning', ...w }),
    onProgress: (p) => void send({ type: 'progress', ...p }),
    ...(options.maxFileSize !== undefined ? { maxFileSize: options.maxFileSize } : {}),
  };
  try {
    const stats = await new DirectoryApplier().apply(process.stdin, options.rootDir, applyOptions);
    await send({ type: 'result', stats });
  } catch (e) {
    const err = e as { code?: unknown; name?: unknown; message?: unknown };
    await send({ type: 'error', code: typeof err.code === 'string' ? err.code : undefined, name: String(err.name ?? 'Error'), message: String(err.message ?? e) });
    process.stdin.destroy();
  }
  process.disconnect?.();
}

void run();
