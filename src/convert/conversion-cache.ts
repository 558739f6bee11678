/**
 * The conversion cache (upstream's dedup database, convertor.md §A.8) in an embedded
 * SQLite file: which converted overlaybd blob a source layer stack (its chain ID) became,
 * and where that blob is stored.
 *
 * Table `overlaybd_layers` keeps upstream's columns (`host`, `repo`, `chain_id`,
 * `data_digest`, `data_size`) plus:
 * - `recipe`: the conversion parameters that shape the blob (file system, mkfs, size,
 *   compression, block size). Upstream keys on the chain ID alone and would hand a
 *   zstd-converted layer to an lz4 conversion; here a different recipe is a miss;
 * - `parent_digest`: the converted blob this layer was built on (empty for the bottom
 *   layer). A layer's blocks only make sense over the exact blocks below it; upstream
 *   relies on byte-identical rebuilds for that, but a kernel-written file system is not
 *   reproducible (timestamps), so a hit must also match the parent actually used;
 * - `url`: where the blob can be fetched (`<scheme>://<host>/v2/<repo>/blobs` or
 *   `oci:<dir>`), so a hit in another place can be copied or cross-mounted.
 *
 * The lookup protocol (check the target, mount or copy from elsewhere, forget stale
 * rows) lives in the convertor; this class only stores rows.
 *
 * @example
 * ```ts
 * const cache = ConversionCache.open('work/conversion-cache.db');
 * cache.record({ host, repo, url, chainId, recipe, parentDigest: '', digest, size });
 * cache.find({ chainId, recipe, parentDigest: '' }, { host, repo }); // rows, that host/repo first
 * cache.close();
 * ```
 */
import Database from 'better-sqlite3';
import type { Database as DB } from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { FailedPreconditionError } from '../io/errors.ts';

/** Where a converted layer blob is stored. */
export interface BlobLocation {
  /** Registry host, or `oci-layout` for a local layout. */
  host: string;
  /** Repository path, or the layout's absolute directory. */
  repo: string;
  /** `<scheme>://<host>/v2/<repo>/blobs`, or `oci:<dir>`. */
  url: string;
}

/** One cache row. */
export interface CachedLayer extends BlobLocation {
  chainId: string;
  recipe: string;
  /** Digest of the converted layer below (`''` for the bottom layer). */
  parentDigest: string;
  digest: string;
  size: number;
}

interface Row {
  host: string;
  repo: string;
  url: string;
  chain_id: string;
  recipe: string;
  parent_digest: string;
  data_digest: string;
  data_size: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS overlaybd_layers (
  host        TEXT    NOT NULL,
  repo        TEXT    NOT NULL,
  chain_id    TEXT    NOT NULL,
  recipe      TEXT    NOT NULL,
  parent_digest TEXT  NOT NULL,
  url         TEXT    NOT NULL,
  data_digest TEXT    NOT NULL,
  data_size   INTEGER NOT NULL,
  created     INTEGER NOT NULL,
  PRIMARY KEY (host, repo, chain_id, recipe, parent_digest)
);
CREATE INDEX IF NOT EXISTS index_chain_id ON overlaybd_layers (chain_id, recipe, parent_digest);
`;

export class ConversionCache {
  readonly #db: DB;

  private constructor(db: DB) {
    this.#db = db;
  }

  /** Opens (creating) the cache file. */
  static open(path: string): ConversionCache {
    let db: DB;
    try {
      mkdirSync(dirname(path), { recursive: true });
      db = new Database(path, { timeout: 10_000 });
      db.pragma('journal_mode = WAL');
      db.exec(SCHEMA);
    } catch (e) {
      throw new FailedPreconditionError(`Cannot open the conversion cache ${path}: ${(e as Error).message}`, { cause: e });
    }
    return new ConversionCache(db);
  }

  /** Every stored location of the conversion `key`; the rows of `prefer` first, newest first. */
  find(key: Pick<CachedLayer, 'chainId' | 'recipe' | 'parentDigest'>, prefer?: Pick<BlobLocation, 'host' | 'repo'>): CachedLayer[] {
    const rows = this.#db
      .prepare(
        'SELECT host, repo, url, chain_id, recipe, parent_digest, data_digest, data_size FROM overlaybd_layers WHERE chain_id = ? AND recipe = ? AND parent_digest = ? ORDER BY created DESC',
      )
      .all(key.chainId, key.recipe, key.parentDigest) as Row[];
    const out = rows.map((r) => ({
      host: r.host,
      repo: r.repo,
      url: r.url,
      chainId: r.chain_id,
      recipe: r.recipe,
      parentDigest: r.parent_digest,
      digest: r.data_digest,
      size: r.data_size,
    }));
    if (prefer === undefined) return out;
    const same = (r: CachedLayer): boolean => r.host === prefer.host && r.repo === prefer.repo;
    return [...out.filter(same), ...out.filter((r) => !same(r))];
  }

  /** Inserts or replaces the row of (host, repo, chain ID, recipe, parent digest). */
  record(row: CachedLayer): void {
    this.#db
      .prepare(
        'INSERT OR REPLACE INTO overlaybd_layers (host, repo, chain_id, recipe, parent_digest, url, data_digest, data_size, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      )
      .run(row.host, row.repo, row.chainId, row.recipe, row.parentDigest, row.url, row.digest, row.size, Date.now());
  }

  /** Removes a row whose blob is gone. */
  forget(row: Pick<CachedLayer, 'host' | 'repo' | 'chainId' | 'recipe' | 'parentDigest'>): void {
    this.#db
      .prepare('DELETE FROM overlaybd_layers WHERE host = ? AND repo = ? AND chain_id = ? AND recipe = ? AND parent_digest = ?')
      .run(row.host, row.repo, row.chainId, row.recipe, row.parentDigest);
  }

  /** Number of rows (statistics, tests). */
  count(): number {
    return (this.#db.prepare('SELECT COUNT(*) AS n FROM overlaybd_layers').get() as { n: number }).n;
  }

  close(): void {
    this.#db.close();
  }
}
