/**
 * The conversion cache (see `conversion-cache.ts`) in an embedded SQLite file: the
 * default, for conversions on one machine (WAL mode lets several convertor processes
 * share the file). Calls are synchronous underneath; the contract is async for the
 * server-backed `PostgresConversionCache`.
 *
 * @example
 * ```ts
 * const cache = SqliteConversionCache.open('work/conversion-cache.db');
 * const rows = await cache.find({ chainId, recipe, parentDigest: '' });
 * await cache.close();
 * ```
 */
import Database from 'better-sqlite3';
import type { Database as DB } from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { FailedPreconditionError } from '../io/errors.ts';
import { LAYER_COLUMNS, layerFromRow, layerTableSql, preferLocation, type CachedLayer, type ConversionCache, type ConversionKey, type LayerRow } from './conversion-cache.ts';


const SCHEMA = layerTableSql('INTEGER');

/** The conversion cache in an embedded SQLite file (WAL; one machine, many processes). */
export class SqliteConversionCache implements ConversionCache {
  readonly #db: DB;

  private constructor(db: DB) {
    this.#db = db;
  }

  /** Opens (creating) the cache file. */
  static open(path: string): SqliteConversionCache {
    let db: DB;
    try {
      mkdirSync(dirname(path), { recursive: true });
      db = new Database(path, { timeout: 10_000 });
      db.pragma('journal_mode = WAL');
      db.exec(SCHEMA);
    } catch (e) {
      throw new FailedPreconditionError(`Cannot open the conversion cache ${path}: ${(e as Error).message}`, { cause: e });
    }
    return new SqliteConversionCache(db);
  }

  async find(key: ConversionKey, prefer?: Parameters<ConversionCache['find']>[1]): Promise<CachedLayer[]> {
    const rows = this.#db
      .prepare(
        `SELECT ${LAYER_COLUMNS} FROM overlaybd_layers WHERE chain_id = ? AND recipe = ? AND parent_digest = ? ORDER BY created DESC`,
      )
      .all(key.chainId, key.recipe, key.parentDigest) as LayerRow[];
    const out = rows.map(layerFromRow);
    return preferLocation(out, prefer);
  }

  async record(row: CachedLayer): Promise<void> {
    this.#db
      .prepare(
        'INSERT OR REPLACE INTO overlaybd_layers (host, repo, chain_id, recipe, parent_digest, url, data_digest, data_size, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      )
      .run(row.host, row.repo, row.chainId, row.recipe, row.parentDigest, row.url, row.digest, row.size, Date.now());
  }

  async forget(row: Parameters<ConversionCache['forget']>[0]): Promise<void> {
    this.#db
      .prepare('DELETE FROM overlaybd_layers WHERE host = ? AND repo = ? AND chain_id = ? AND recipe = ? AND parent_digest = ? AND data_digest = ?')
      .run(row.host, row.repo, row.chainId, row.recipe, row.parentDigest, row.digest);
  }

  async count(): Promise<number> {
    return (this.#db.prepare('SELECT COUNT(*) AS n FROM overlaybd_layers').get() as { n: number }).n;
  }

  async close(): Promise<void> {
    this.#db.close();
  }
}
