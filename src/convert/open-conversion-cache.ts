/**
 * Picks the conversion cache backend from the convertor's options: PostgreSQL when a
 * connection string is given (`--db-str`, with `--db-type postgres` or a
 * `postgres://`/`postgresql://` URL), else the embedded SQLite file. Upstream's
 * `--db-type mysql` is refused: MySQL is not implemented. Each backend (and its driver)
 * is loaded only when picked.
 *
 * @example
 * ```ts
 * const cache = await openConversionCache({ dbStr: 'postgresql://convertor@db/cache' });
 * const local = await openConversionCache({ sqlitePath: 'work/conversion-cache.db' });
 * ```
 */
import { InvalidArgumentError, UnsupportedError } from '../io/errors.ts';
import type { ConversionCache } from './conversion-cache.ts';

export interface OpenConversionCacheOptions {
  /** `--db-type`: `postgres`/`postgresql`/`pg`, `sqlite`, or empty (inferred). */
  dbType?: string;
  /** `--db-str`: the PostgreSQL connection string (or, for `sqlite`, the file). */
  dbStr?: string;
  /** The SQLite file used when no connection string is given. */
  sqlitePath?: string;
}

/** Opens the conversion cache the options name (see the module comment); the caller closes it. */
export async function openConversionCache(options: OpenConversionCacheOptions): Promise<ConversionCache> {
  const type = (options.dbType ?? '').toLowerCase();
  const str = options.dbStr ?? '';
  if (type === 'mysql') throw new UnsupportedError('Cannot open the conversion cache: --db-type mysql is not supported (use postgres or sqlite)');
  const postgres = type === 'postgres' || type === 'postgresql' || type === 'pg' || (type === '' && /^postgres(ql)?:\/\//.test(str));
  if (postgres) {
    if (str === '') throw new InvalidArgumentError(`Cannot open the conversion cache: --db-type ${type} needs --db-str`);
    const { PostgresConversionCache } = await import('./postgres-conversion-cache.ts');
    return PostgresConversionCache.connect(str);
  }
  if (type !== '' && type !== 'sqlite') throw new InvalidArgumentError(`Invalid --db-type ${type}: expected postgres or sqlite`);
  const path = str !== '' ? str : options.sqlitePath;
  if (path === undefined) throw new InvalidArgumentError('Cannot open the conversion cache: no SQLite file and no --db-str given');
  const { SqliteConversionCache } = await import('./sqlite-conversion-cache.ts');
  return SqliteConversionCache.open(path);
}
