/**
 * The conversion cache (see `conversion-cache.ts`) in a PostgreSQL database, shared by
 * any number of convertor machines: what one converted and pushed, the others reuse
 * (cross-repository mounts on the same registry, copies elsewhere).
 *
 * Concurrency: the schema is created under a transaction-scoped advisory lock (two
 * convertors starting at once would otherwise race in `CREATE TABLE IF NOT EXISTS` and
 * one fail on PostgreSQL's catalog constraint); every row change is one statement
 * (`INSERT … ON CONFLICT DO UPDATE`, a `DELETE` that names the digest it found missing),
 * so two convertors racing on the same layer each leave a row naming a blob they pushed.
 *
 * @example
 * ```ts
 * const cache = await PostgresConversionCache.connect('postgresql://convertor@db.example/conversioncache');
 * await cache.record({ host, repo, url, chainId, recipe, parentDigest: '', digest, size });
 * await cache.close();
 * ```
 */
import pg from 'pg';
import { FailedPreconditionError } from '../io/errors.ts';
import { LAYER_COLUMNS, layerFromRow, layerTableSql, preferLocation, type CachedLayer, type ConversionCache, type ConversionKey, type LayerRow } from './conversion-cache.ts';


/** Advisory lock key of the schema creation ("obdconv" in ASCII). */
const SCHEMA_LOCK = 0x6f6264636f6e76;

const SCHEMA = layerTableSql('BIGINT');

/** The connection string with any password replaced, for messages. */
function redact(connectionString: string): string {
  return connectionString.replace(/(\/\/[^:/@]*:)[^@]*@/, '$1***@').replace(/(password=)\S+/i, '$1***');
}

/** The conversion cache in PostgreSQL (many machines). */
export class PostgresConversionCache implements ConversionCache {
  readonly #pool: pg.Pool;

  private constructor(pool: pg.Pool) {
    this.#pool = pool;
  }

  /**
   * Connects (libpq-style URL, e.g. `postgresql://user:pass@host:5432/db` or
   * `postgresql://user@/db?host=/run/postgresql` for a unix socket) and creates the table
   * when missing.
   */
  static async connect(connectionString: string): Promise<PostgresConversionCache> {
    const pool = new pg.Pool({ connectionString, max: 4, connectionTimeoutMillis: 15_000, idleTimeoutMillis: 10_000 });
    // An idle client losing its connection must not crash the process; the next query fails instead.
    pool.on('error', () => undefined);
    try {
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        await client.query('SELECT pg_advisory_xact_lock($1)', [SCHEMA_LOCK]);
        await client.query(SCHEMA);
        await client.query('COMMIT');
      } catch (e) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw e;
      } finally {
        client.release();
      }
    } catch (e) {
      await pool.end().catch(() => undefined);
      throw new FailedPreconditionError(`Cannot open the conversion cache ${redact(connectionString)}: ${(e as Error).message}`, { cause: e });
    }
    return new PostgresConversionCache(pool);
  }

  async #query<R extends pg.QueryResultRow>(what: string, text: string, values: unknown[]): Promise<pg.QueryResult<R>> {
    try {
      return await this.#pool.query<R>(text, values);
    } catch (e) {
      throw new FailedPreconditionError(`Cannot ${what} in the conversion cache: ${(e as Error).message}`, { cause: e });
    }
  }

  async find(key: ConversionKey, prefer?: Parameters<ConversionCache['find']>[1]): Promise<CachedLayer[]> {
    const r = await this.#query<LayerRow>(
      'look up a layer',
      `SELECT ${LAYER_COLUMNS} FROM overlaybd_layers WHERE chain_id = $1 AND recipe = $2 AND parent_digest = $3 ORDER BY created DESC`,
      [key.chainId, key.recipe, key.parentDigest],
    );
    const rows = r.rows.map(layerFromRow);
    return preferLocation(rows, prefer);
  }

  async record(row: CachedLayer): Promise<void> {
    await this.#query(
      'record a layer',
      'INSERT INTO overlaybd_layers (host, repo, chain_id, recipe, parent_digest, url, data_digest, data_size, created) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ' +
        'ON CONFLICT (host, repo, chain_id, recipe, parent_digest) DO UPDATE SET url = EXCLUDED.url, data_digest = EXCLUDED.data_digest, data_size = EXCLUDED.data_size, created = EXCLUDED.created',
      [row.host, row.repo, row.chainId, row.recipe, row.parentDigest, row.url, row.digest, row.size, Date.now()],
    );
  }

  async forget(row: Parameters<ConversionCache['forget']>[0]): Promise<void> {
    await this.#query(
      'forget a layer',
      'DELETE FROM overlaybd_layers WHERE host = $1 AND repo = $2 AND chain_id = $3 AND recipe = $4 AND parent_digest = $5 AND data_digest = $6',
      [row.host, row.repo, row.chainId, row.recipe, row.parentDigest, row.digest],
    );
  }

  async count(): Promise<number> {
    const r = await this.#query<{ n: number }>('count layers', 'SELECT COUNT(*)::int AS n FROM overlaybd_layers', []);
    return r.rows[0]?.n ?? 0;
  }

  async close(): Promise<void> {
    await this.#pool.end();
  }
}
