/**
 * A private PostgreSQL cluster for tests (Debian's server packages): `initdb` into a
 * temporary directory owned by the `postgres` user, `pg_ctl start` with TCP disabled
 * and the unix socket in that directory, a connection string for it, and `stop()` that
 * shuts it down (fast, then immediate, then SIGKILL) and removes the directory.
 *
 * @example
 * ```ts
 * const pgsql = await startPostgres();
 * try {
 *   const cache = await PostgresConversionCache.connect(pgsql.connectionString);
 * } finally {
 *   await pgsql.stop();
 * }
 * ```
 */
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';

export interface TestPostgres {
  /** `postgresql://postgres@/postgres?host=<socket dir>` */
  readonly connectionString: string;
  /** A connection string for another database of the cluster (created on demand by `createDatabase`). */
  databaseUrl(name: string): string;
  createDatabase(name: string): Promise<void>;
  stop(): Promise<void>;
}

/** The newest installed server's bin directory, or undefined. */
function serverBin(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'pg_ctl')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

/** Why a private PostgreSQL cannot run here, or false. */
export function postgresSkipReason(): string | false {
  if (process.getuid?.() !== 0) return 'needs root (runs the server as user postgres)';
  if (serverBin() === undefined) return 'needs PostgreSQL (apt-get install postgresql)';
  if (!readFileSync('/etc/passwd', 'utf8').split('\n').some((l) => l.startsWith('postgres:'))) return 'needs the postgres user';
  return false;
}

function run(argv: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Starts a private cluster; the caller must `stop()` it (in `after()`). */
export async function startPostgres(): Promise<TestPostgres> {
  const bin = serverBin();
  if (bin === undefined) throw new Error('Cannot start PostgreSQL: no server under /usr/lib/postgresql');
  // Short path: the socket path is limited to 108 bytes.
  const dir = await mkdtemp('/tmp/obd-pg-');
  const data = join(dir, 'data');
  const asPostgres = (...argv: string[]): Promise<string> => run(['runuser', '-u', 'postgres', '--', ...argv]);
  const url = (db: string): string => `postgresql://postgres@/${db}?host=${encodeURIComponent(dir)}`;
  let started = false;
  const stop = async (): Promise<void> => {
    if (started) {
      started = false;
      try {
        await asPostgres(join(bin, 'pg_ctl'), '-D', data, '-m', 'fast', '-w', '-t', '20', 'stop');
      } catch {
        await asPostgres(join(bin, 'pg_ctl'), '-D', data, '-m', 'immediate', '-w', '-t', '10', 'stop').catch(() => undefined);
      }
      // Last resort: the postmaster named in its pid file.
      const pidFile = join(data, 'postmaster.pid');
      if (existsSync(pidFile)) {
        const pid = Number(readFileSync(pidFile, 'utf8').split('\n')[0]);
        if (pid > 0) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // gone
          }
        }
      }
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const pw = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('postgres:'))
      ?.split(':');
    await chown(dir, Number(pw?.[2]), Number(pw?.[3]));
    await asPostgres(join(bin, 'initdb'), '-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale', 'C');
    started = true;
    await asPostgres(
      join(bin, 'pg_ctl'),
      '-D',
      data,
      '-l',
      join(dir, 'server.log'),
      '-o',
      `-c listen_addresses='' -k ${dir} -c fsync=off -c max_connections=50`,
      '-w',
      '-t',
      '30',
      'start',
    );
  } catch (e) {
    await stop();
    throw e;
  }
  return {
    connectionString: url('postgres'),
    databaseUrl: url,
    async createDatabase(name) {
      await asPostgres(join(bin, 'psql'), '-h', dir, '-U', 'postgres', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-c', `CREATE DATABASE "${name}"`);
    },
    stop,
  };
}
