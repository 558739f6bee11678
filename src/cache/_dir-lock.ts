/**
 * Exclusive ownership of a cache directory by one `BlockCache` (one process, one open
 * instance).
 *
 * Node has no `flock`, and a PID lock file goes stale when its owner is killed; breaking
 * a stale file races with a second breaker. Instead the lock is a listening Unix socket
 * in the Linux *abstract* namespace, named after the directory's device and inode
 * (`\0overlaybd-ts/cache/<dev>:<ino>`): binding is atomic and exclusive, and the kernel
 * releases the name when the owner exits or is killed, so no lock ever goes stale. The
 * socket is `unref`'d (it never keeps the process alive) and accepts no connections.
 *
 * A `.lock` file beside the data records the owner's PID for the error message only.
 *
 * Limit: the abstract namespace belongs to the network namespace, so two processes in
 * different network namespaces sharing the directory are not excluded.
 */
import { createServer, type Server } from 'node:net';
import { rm, stat, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { FailedPreconditionError } from '../io/errors.ts';

const INFO_FILE = '.lock';

/** A held directory lock; `release()` once. */
export interface DirLock {
  release(): Promise<void>;
}

function holderOf(dir: string): string {
  try {
    const pid = readFileSync(join(dir, INFO_FILE), 'utf8').trim();
    return /^\d+$/.test(pid) ? `process ${pid}` : 'another process';
  } catch {
    return 'another process';
  }
}

/** Takes the lock of `dir` or throws `FailedPreconditionError` naming the holder. */
export async function acquireDirLock(dir: string): Promise<DirLock> {
  const st = await stat(dir, { bigint: true });
  const name = `\0overlaybd-ts/cache/${st.dev}:${st.ino}`;
  const server: Server = createServer((sock) => sock.destroy());
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      if (e.code === 'EADDRINUSE') {
        reject(new FailedPreconditionError(`Cannot open cache directory ${dir}: it is in use by ${holderOf(dir)}`, { cause: e }));
      } else {
        reject(e);
      }
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen(name);
  });
  server.unref();
  await writeFile(join(dir, INFO_FILE), `${process.pid}\n`).catch(() => undefined);
  let released = false;
  return {
    async release(): Promise<void> {
      if (released) return;
      released = true;
      await rm(join(dir, INFO_FILE), { force: true }).catch(() => undefined);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
