/**
 * The conversion cache contract, run against both backends: SQLite (a file) and
 * PostgreSQL (a private cluster started here; needs root and Debian's postgresql).
 * Rows per location, recipe and parent; reopening; `forget` only while a row still names
 * the missing blob; racing writers (schema creation and records from several connections
 * at once) leave a consistent table.
 */
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CachedLayer, ConversionCache } from './conversion-cache.ts';
import { SqliteConversionCache } from './sqlite-conversion-cache.ts';
import { PostgresConversionCache } from './postgres-conversion-cache.ts';
import { openConversionCache } from './open-conversion-cache.ts';
import { FailedPreconditionError, InvalidArgumentError, UnsupportedError } from '../io/errors.ts';
import { postgresSkipReason, startPostgres, type TestPostgres } from '../../test/support/postgres.ts';

const row = (over: Partial<CachedLayer>): CachedLayer => ({
  host: 'reg.local',
  repo: 'a',
  url: 'http://reg.local/v2/a/blobs',
  chainId: 'sha256:c0',
  recipe: 'r1',
  parentDigest: '',
  digest: 'sha256:d0',
  size: 10,
  ...over,
});

interface Backend {
  /** Opens the store named `name` (the same name reopens the same store). */
  open(name: string): Promise<ConversionCache>;
}

function cacheSuite(name: string, backend: () => Backend, skip: string | false): void {
  describe(`ConversionCache (${name})`, { skip }, () => {
    test('stores rows per location, recipe and parent, and survives reopening', async () => {
      let cache = await backend().open('rows');
      await cache.record(row({}));
      await cache.record(row({ repo: 'b', url: 'http://reg.local/v2/b/blobs' }));
      await cache.record(row({ recipe: 'r2', digest: 'sha256:other' }));
      await cache.record(row({ parentDigest: 'sha256:p', digest: 'sha256:on-p' }));
      await cache.record(row({ size: 11 })); // replaces the first row
      await cache.close();
      cache = await backend().open('rows');
      try {
        assert.equal(await cache.count(), 4);
        const key = { chainId: 'sha256:c0', recipe: 'r1', parentDigest: '' };
        assert.deepEqual((await cache.find(key, { host: 'reg.local', repo: 'b' })).map((r) => r.repo), ['b', 'a']);
        assert.deepEqual((await cache.find(key, { host: 'reg.local', repo: 'a' })).map((r) => [r.repo, r.size]), [['a', 11], ['b', 10]]);
        assert.deepEqual((await cache.find({ ...key, recipe: 'r2' })).map((r) => r.digest), ['sha256:other']);
        assert.deepEqual((await cache.find({ ...key, parentDigest: 'sha256:p' })).map((r) => r.digest), ['sha256:on-p']);
        assert.deepEqual(await cache.find({ ...key, parentDigest: 'sha256:q' }), []);
        // forget() removes a row only while it names the blob found missing.
        await cache.forget(row({ repo: 'b', digest: 'sha256:not-this-one' }));
        assert.equal((await cache.find(key)).length, 2);
        await cache.forget(row({ repo: 'b' }));
        assert.deepEqual((await cache.find(key)).map((r) => r.repo), ['a']);
        const big = row({ chainId: 'sha256:big', size: 2 ** 40 + 3 });
        await cache.record(big);
        assert.deepEqual(await cache.find({ chainId: 'sha256:big', recipe: 'r1', parentDigest: '' }), [big]);
      } finally {
        await cache.close();
      }
    });

    test('racing convertors (schema creation, records of one layer) leave a consistent table', async () => {
      const caches = await Promise.all(Array.from({ length: 4 }, () => backend().open('race')));
      try {
        // Each "machine" records the same layer into the same and its own repository, many times.
        await Promise.all(
          caches.map(async (c, i) => {
            for (let k = 0; k < 25; k++) {
              await c.record(row({ digest: `sha256:m${i}-${k}` }));
              await c.record(row({ repo: `own-${i}`, url: `http://reg.local/v2/own-${i}/blobs`, digest: `sha256:m${i}-${k}` }));
            }
          }),
        );
        const first = caches[0] as ConversionCache;
        assert.equal(await first.count(), 5);
        const rows = await first.find({ chainId: 'sha256:c0', recipe: 'r1', parentDigest: '' }, { host: 'reg.local', repo: 'a' });
        assert.equal(rows[0]?.repo, 'a');
        for (const r of rows) assert.match(r.digest, /^sha256:m[0-3]-24$|^sha256:m[0-3]-\d+$/);
        for (let i = 0; i < 4; i++) assert.equal(rows.find((r) => r.repo === `own-${i}`)?.digest, `sha256:m${i}-24`, "each machine's last write of its own row");
      } finally {
        await Promise.all(caches.map((c) => c.close()));
      }
    });
  });
}

let dir = '';
let pgsql: TestPostgres | undefined;
const pgSkip = postgresSkipReason();
const databases = new Map<string, Promise<void>>();

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-cache-'));
  if (pgSkip === false) pgsql = await startPostgres();
});
after(async () => {
  await pgsql?.stop();
  rmSync(dir, { recursive: true, force: true });
});

cacheSuite('SQLite', () => ({ open: async (name) => SqliteConversionCache.open(join(dir, 'sub', `${name}.db`)) }), false);
cacheSuite(
  'PostgreSQL',
  () => ({
    async open(name) {
      const pg = pgsql as TestPostgres;
      if (!databases.has(name)) databases.set(name, pg.createDatabase(name));
      await databases.get(name);
      return PostgresConversionCache.connect(pg.databaseUrl(name));
    },
  }),
  pgSkip,
);

test('openConversionCache() picks the backend from --db-type/--db-str and refuses what it cannot open', async () => {
  const sqlite = await openConversionCache({ sqlitePath: join(dir, 'default.db') });
  assert.ok(sqlite instanceof SqliteConversionCache);
  await sqlite.close();
  await assert.rejects(openConversionCache({ dbType: 'mysql', dbStr: 'u:p@tcp(127.0.0.1:3306)/c' }), UnsupportedError);
  await assert.rejects(openConversionCache({ dbType: 'postgres' }), InvalidArgumentError);
  await assert.rejects(openConversionCache({ dbType: 'oracle', dbStr: 'x' }), InvalidArgumentError);
  // Nothing listens on this socket directory: a clear error naming the cache, no password in it.
  await assert.rejects(
    openConversionCache({ dbStr: `postgresql://u:secret@/db?host=${encodeURIComponent(join(dir, 'nowhere'))}` }),
    (e: unknown) => e instanceof FailedPreconditionError && /Cannot open the conversion cache postgresql:\/\/u:\*\*\*@/.test(e.message) && !e.message.includes('secret'),
  );
  if (pgsql !== undefined) {
    const pg = await openConversionCache({ dbStr: pgsql.connectionString });
    assert.ok(pg instanceof PostgresConversionCache);
    await pg.close();
  }
});
