/**
 * The conversion cache (upstream's dedup database, convertor.md §A.8): which converted
 * overlaybd blob a source layer stack (its chain ID) became, and where that blob is
 * stored. Two backends share this contract: `SqliteConversionCache` (an embedded file,
 * one machine; the default) and `PostgresConversionCache` (a server shared by many
 * convertor machines); `openConversionCache()` picks one from the CLI's options.
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
 * Rows are only written after their blob was pushed, one statement each, so racing
 * convertors cannot leave a row pointing at a missing blob: the last writer of a
 * (location, chain ID, recipe, parent) wins with a blob it pushed itself, and `forget`
 * removes a row only if it still names the blob found missing.
 *
 * The lookup protocol (check the target, mount or copy from elsewhere, forget stale
 * rows) lives in the convertor; the backends only store rows.
 *
 * @example
 * ```ts
 * const cache = await openConversionCache({ sqlitePath: 'work/conversion-cache.db' });
 * await cache.record({ host, repo, url, chainId, recipe, parentDigest: '', digest, size });
 * await cache.find({ chainId, recipe, parentDigest: '' }, { host, repo }); // that host/repo first
 * await cache.close();
 * ```
 */

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

/** The key of a conversion: the same source stack, parameters and parent blob. */
export type ConversionKey = Pick<CachedLayer, 'chainId' | 'recipe' | 'parentDigest'>;

/** The dedup database, whatever stores it. */
export interface ConversionCache {
  /** Every stored location of the conversion `key`; the rows of `prefer` first, newest first. */
  find(key: ConversionKey, prefer?: Pick<BlobLocation, 'host' | 'repo'>): Promise<CachedLayer[]>;
  /** Inserts or replaces the row of (host, repo, chain ID, recipe, parent digest). */
  record(row: CachedLayer): Promise<void>;
  /** Removes a row whose blob is gone (only while it still names that blob). */
  forget(row: Pick<CachedLayer, 'host' | 'repo' | 'chainId' | 'recipe' | 'parentDigest' | 'digest'>): Promise<void>;
  /** Number of rows (statistics, tests). */
  count(): Promise<number>;
  close(): Promise<void>;
}

/** Puts the rows of `prefer` first, keeping the order otherwise. */
export function preferLocation(rows: CachedLayer[], prefer?: Pick<BlobLocation, 'host' | 'repo'>): CachedLayer[] {
  if (prefer === undefined) return rows;
  const same = (r: CachedLayer): boolean => r.host === prefer.host && r.repo === prefer.repo;
  return [...rows.filter(same), ...rows.filter((r) => !same(r))];
}

/**
 * The layer table both backends keep, in one definition: `int64` is the dialect's 64-bit
 * integer (`BIGINT` in PostgreSQL, `INTEGER` in SQLite).
 */
export function layerTableSql(int64: 'BIGINT' | 'INTEGER'): string {
  return `
CREATE TABLE IF NOT EXISTS overlaybd_layers (
  host          TEXT NOT NULL,
  repo          TEXT NOT NULL,
  chain_id      TEXT NOT NULL,
  recipe        TEXT NOT NULL,
  parent_digest TEXT NOT NULL,
  url           TEXT NOT NULL,
  data_digest   TEXT NOT NULL,
  data_size     ${int64} NOT NULL,
  created       ${int64} NOT NULL,
  PRIMARY KEY (host, repo, chain_id, recipe, parent_digest)
);
CREATE INDEX IF NOT EXISTS index_chain_id ON overlaybd_layers (chain_id, recipe, parent_digest);
`;
}

/** The columns a lookup selects (`data_size` as the driver returns a 64-bit integer). */
export interface LayerRow {
  host: string;
  repo: string;
  url: string;
  chain_id: string;
  recipe: string;
  parent_digest: string;
  data_digest: string;
  data_size: number | string;
}

/** The SELECT list of {@link LayerRow}. */
export const LAYER_COLUMNS = 'host, repo, url, chain_id, recipe, parent_digest, data_digest, data_size';

/** A selected row as the contract's {@link CachedLayer}. */
export function layerFromRow(r: LayerRow): CachedLayer {
  return { host: r.host, repo: r.repo, url: r.url, chainId: r.chain_id, recipe: r.recipe, parentDigest: r.parent_digest, digest: r.data_digest, size: Number(r.data_size) };
}
