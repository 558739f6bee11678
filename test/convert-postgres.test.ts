/**
 * Issue 5 scope 4 with PostgreSQL: the conversion cache shared by several convertor
 * "machines" (separate `obd convert` processes with their own work directories) through
 * a private PostgreSQL cluster started here (Debian's server), into a real registry.
 *
 * - a re-run of the same conversion converts 0 layers (counted);
 * - a second machine converting the same image into another repository converts 0 layers
 *   and gets every layer by cross-repository mount; its image mounts to the same tree;
 * - two machines racing on the same new image both succeed, and every cache row they
 *   leave names a blob that exists in its repository (a third run reuses them all).
 *
 * Needs root (mounts), docker-registry and postgresql.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { sampleLayers } from './support/sample-layers.ts';
import { buildTar } from '../src/convert/tar-writer.ts';
import { writeTestImage } from './support/oci-image.ts';
import { diffTrees } from './support/tree-diff.ts';
import { REPO_ROOT } from './support/shared.ts';
import { startRegistry, type TestRegistry } from './support/registry.ts';
import { postgresSkipReason, startPostgres, type TestPostgres } from './support/postgres.ts';
import { createConvertHarness, type ConvertHarness, type ConvertResultLine } from './support/convert-harness.ts';
import pg from 'pg';
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { PostgresConversionCache } from '../src/convert/postgres-conversion-cache.ts';

const skip = postgresSkipReason();
let h: ConvertHarness;
let reg: TestRegistry | undefined;
let pgsql: TestPostgres | undefined;
let sampleRef = '';

/** `obd convert` in its own process (another "machine": its own work directory). */
async function convertElsewhere(machine: string, src: string, dst: string): Promise<ConvertResultLine> {
  const bin = join(REPO_ROOT, 'src', 'cli', 'bin', 'obd.ts');
  const args = ['convert', src, dst, '--work-dir', join(h.dir, `work-${machine}`), '--db-str', (pgsql as TestPostgres).connectionString, '--plain-http', (reg as TestRegistry).host, '--json'];
  const child = spawn(process.execPath, ['--import', 'tsx', bin, ...args], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 150_000);
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(timer);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${stderr}`);
  const lines = stdout.trim().split('\n').map((l) => JSON.parse(l) as { type: string });
  return lines.find((l) => l.type === 'result') as unknown as ConvertResultLine;
}

before(async () => {
  h = createConvertHarness('obd-convert-pg-');
  if (skip !== false) return;
  const { layers } = sampleLayers();
  sampleRef = await writeTestImage(join(h.dir, 'src'), {
    tag: 'sample',
    layers: [
      { tar: layers[0] as Uint8Array, compression: 'gzip' },
      { tar: layers[1] as Uint8Array, compression: 'zstd' },
      { tar: layers[2] as Uint8Array, compression: 'none' },
    ],
  });
  pgsql = await startPostgres();
  reg = await startRegistry({ auth: 'none' });
});

after(async () => {
  await reg?.stop();
  await pgsql?.stop();
  await h.cleanup();
});

describe('obd convert --db-str (PostgreSQL conversion cache)', { skip }, () => {
  test('a re-run converts 0 layers; a second machine cross-mounts every layer into another repository', { timeout: 300_000 }, async () => {
    const { host } = reg as TestRegistry;
    const db = (pgsql as TestPostgres).connectionString;
    const a = await h.convert(sampleRef, `${host}/obd/a:v1`, '--work-dir', h.work, '--db-type', 'postgres', '--db-str', db, '--plain-http', host);
    assert.equal(a.layersConverted, 3);
    const again = await h.convert(sampleRef, `${host}/obd/a:v1`, '--work-dir', h.work, '--db-str', db, '--plain-http', host);
    assert.deepEqual([again.layersConverted, again.layersReused, again.digest], [0, 3, a.digest]);
    const b = await convertElsewhere('b', sampleRef, `${host}/obd/b:v1`);
    assert.deepEqual([b.layersConverted, b.layersReused, b.blobsMounted], [0, 3, 3]);
    assert.equal(b.digest, a.digest, 'the same manifest');
    // Both images mounted at once: the same tree.
    const [ma, mb] = [mkdtempSync(join(h.dir, 'mnt-a-')), mkdtempSync(join(h.dir, 'mnt-b-'))];
    await h.obd('mount', `${host}/obd/a:v1`, ma, '--run-dir', h.runDir, '--plain-http', host);
    try {
      await h.obd('mount', `${host}/obd/b:v1`, mb, '--run-dir', h.runDir, '--plain-http', host);
      try {
        assert.equal(await diffTrees(ma, mb), undefined);
        assert.equal(readFileSync(join(mb, 'opt/docs/readme'), 'utf8'), 'read me, version 2\n');
      } finally {
        await h.obd('umount', mb, '--run-dir', h.runDir);
      }
    } finally {
      await h.obd('umount', ma, '--run-dir', h.runDir);
    }
    h.assertNothingLeft();
    const cache = await PostgresConversionCache.connect(db);
    try {
      assert.equal(await cache.count(), 6, 'three layers in each of two repositories');
    } finally {
      await cache.close();
    }
  });

  test('two machines racing on the same image both succeed and leave only rows whose blobs exist', { timeout: 300_000 }, async () => {
    const { host } = reg as TestRegistry;
    // A new image: its layers are in no cache yet.
    const enc = new TextEncoder();
    const src = await writeTestImage(join(h.dir, 'race-src'), {
      tag: 'race',
      layers: [
        { tar: buildTar([{ path: 'etc/', type: 'directory' }, { path: 'etc/one', type: 'file', data: enc.encode('one') }]), compression: 'gzip' },
        { tar: buildTar([{ path: 'etc/two', type: 'file', data: enc.encode('two') }, { path: 'etc/.wh.one', type: 'file' }]), compression: 'gzip' },
      ],
    });
    const [c, d] = await Promise.all([convertElsewhere('c', src, `${host}/obd/c:v1`), convertElsewhere('d', src, `${host}/obd/d:v1`)]);
    assert.equal(c.layersConverted + c.layersReused, 2);
    assert.equal(d.layersConverted + d.layersReused, 2);
    for (const repo of ['c', 'd']) {
      await h.withMount(`${host}/obd/${repo}:v1`, async (mnt) => {
        assert.deepEqual(readdirSync(join(mnt, 'etc')), ['two']);
        assert.equal(readFileSync(join(mnt, 'etc/two'), 'utf8'), 'two');
      }, ['--plain-http', host]);
    }
    // Every row names a blob present in its repository.
    const client = new pg.Client({ connectionString: (pgsql as TestPostgres).connectionString });
    await client.connect();
    try {
      const { rows } = await client.query<{ repo: string; data_digest: string }>('SELECT repo, data_digest FROM overlaybd_layers');
      assert.ok(rows.filter((r) => r.repo === 'obd/c' || r.repo === 'obd/d').length >= 2, JSON.stringify(rows));
      for (const r of rows) {
        const res = await fetch(`http://${host}/v2/${r.repo}/blobs/${r.data_digest}`, { method: 'HEAD' });
        assert.equal(res.status, 200, `${r.repo} ${r.data_digest}`);
      }
    } finally {
      await client.end();
    }
    const e = await convertElsewhere('e', src, `${host}/obd/e:v1`);
    assert.deepEqual([e.layersConverted, e.layersReused], [0, 2]);
  });
});
