/**
 * `obd convert` flags and companions with real kernel mounts (root): upstream's
 * `-r/-i/-o` form with `--no-upload`, `--dump-manifest`, `--json`; `--no-mkfs` on the
 * prebuilt base layer; busybox run under chroot; `obd apply`; SIGINT mid-apply tears
 * everything down. The acceptance cases are in convert.test.ts.
 */
import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { buildTar, type TarWriteEntry } from '../src/convert/tar-writer.ts';
import { FIXTURES, REPO_ROOT, sha256 } from './support/shared.ts';
import { pseudoRandom } from './support/sample-layers.ts';
import { writeTestImage } from './support/oci-image.ts';
import { createConvertHarness, HELLO, HELLO_LAYER, layoutContent, originalHello } from './support/convert-harness.ts';

const h = createConvertHarness('obd-convert-cli-');

after(async () => {
  await h.cleanup();
});

describe('obd convert (flags) and obd apply', () => {
  test('SIGINT during an apply tears everything down and pushes nothing', { timeout: 120_000 }, async () => {
    const big = buildTar(Array.from({ length: 400 }, (_, i): TarWriteEntry => ({ path: `data/f${i}`, type: 'file', data: pseudoRandom(i, 256 * 1024) })));
    const src = await writeTestImage(join(h.dir, 'big'), { tag: 'big', layers: [{ tar: big, compression: 'gzip' }] });
    const target = join(h.dir, 'big-out');
    const bin = join(REPO_ROOT, 'src', 'cli', 'bin', 'obd.ts');
    const child = spawn(process.execPath, ['--import', 'tsx', bin, 'convert', src, `oci:${target}:x`, '--work-dir', h.work, '--no-db', '--json'], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('close', resolve));
    let sent = false;
    let text = '';
    child.stdout.on('data', (d: Buffer) => {
      text += d.toString();
      if (!sent && /"phase":"apply","bytes":[1-9]/.test(text)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    const code = await exited;
    clearTimeout(timer);
    assert.ok(sent, `no apply progress seen: ${text} ${stderr}`);
    assert.notEqual(code, 0);
    assert.match(stderr, /interrupted/);
    assert.deepEqual(layoutContent(target), { manifests: 0, blobs: [] });
    h.assertNothingLeft();
  });

  test("upstream's -r/-i/-o form, --no-upload, --dump-manifest and --json events", { timeout: 120_000 }, async () => {
    const work2 = join(h.dir, 'work2');
    const out = await h.obd('convert', '-r', `oci:${HELLO}`, '-i', 'amd64', '-o', 'obd', '--no-upload', '--dump-manifest', '-d', work2, '--no-db', '--json');
    const events = out.trim().split('\n').map((l) => JSON.parse(l) as { type: string; phase?: string; done?: boolean; target?: string; digest?: string; kind?: string });
    const result = events.find((e) => e.type === 'result');
    assert.equal(result?.target, `oci:${join(work2, 'output')}:obd`);
    assert.ok(events.some((e) => e.type === 'manifest'));
    assert.ok(events.some((e) => e.type === 'layer' && e.phase === 'apply' && e.done === true));
    assert.ok(events.some((e) => e.type === 'layer' && e.phase === 'commit' && e.done === true));
    assert.deepEqual(events.filter((e) => e.type === 'pushed').map((e) => e.kind), ['layer', 'config', 'manifest']);
    const index = JSON.parse(readFileSync(join(work2, 'output', 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; annotations: Record<string, string> }> };
    assert.equal(index.manifests[0]?.digest, result?.digest);
    assert.equal(index.manifests[0]?.annotations['org.opencontainers.image.ref.name'], 'obd');
    const dumped = readdirSync(join(work2, 'dump')).sort();
    assert.deepEqual(dumped, ['1-image-config.json', '1-image-manifest.json']);
    assert.equal(sha256(readFileSync(join(work2, 'dump', '1-image-manifest.json'))), (result?.digest as string).slice(7));
    assert.ok(!existsSync(join(HELLO, 'index.json.tmp')));
  });

  test('progress: per-layer lines with bars, bytes and rates on a terminal; quiet when not a terminal', { timeout: 120_000 }, async () => {
    const bin = join(REPO_ROOT, 'src', 'cli', 'bin', 'obd.ts');
    const args = (out: string): string[] => ['convert', `oci:${HELLO}:amd64`, `oci:${join(h.dir, out)}:x`, '--work-dir', h.work, '--no-db'];
    // A terminal: util-linux script(1) gives the command a pseudo-terminal.
    const command = [process.execPath, '--import', 'tsx', bin, ...args('progress-tty')].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
    const tty = spawnSync('script', ['-q', '-e', '-c', command, '/dev/null'], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 90_000, env: { ...process.env, COLUMNS: '120' } });
    assert.equal(tty.status, 0, tty.stdout + tty.stderr);
    assert.match(tty.stdout, /\x1b\[2Klayer 1\/1  apply {35}0\.0 MiB  (\d+\.\d MiB\/s|done in \d+\.\d s)/);
    assert.match(tty.stdout, /\x1b\[1F\x1b\[2Klayer 1\/1  commit {34}0\.2 MiB  done in \d+\.\d s/, 'the frame is redrawn in place');
    assert.match(tty.stdout, /\x1b\[1F\x1b\[2Klayer 1\/1  push {5}\[#{20}\] {5}0\.2\/0\.2 MiB  done in \d+\.\d s/);
    // Not a terminal: only the result line.
    const plain = spawnSync(process.execPath, ['--import', 'tsx', bin, ...args('progress-plain')], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 90_000 });
    assert.equal(plain.status, 0, plain.stderr);
    assert.equal(plain.stderr, '');
    assert.match(plain.stdout, /^oci:.*progress-plain:x: sha256:[0-9a-f]{64} \(1 manifest; 1 layers converted/);
    assert.doesNotMatch(plain.stdout, /\x1b/);
  });

  test('--no-mkfs builds on upstream base layer ext4_64 and prepends it', { timeout: 120_000 }, async () => {
    const baseDir = join(h.dir, 'baselayer');
    mkdirSync(baseDir);
    const x = spawnSync('tar', ['-xzf', join(FIXTURES, 'ext4_64.tar.gz'), '-C', baseDir]);
    assert.equal(x.status, 0);
    const out = `oci:${join(h.dir, 'nomkfs-out')}:hello`;
    const r = await h.convert(`oci:${HELLO}:amd64`, out, '--work-dir', h.work, '--no-db', '--no-mkfs', '--base-layer', join(baseDir, 'ext4_64'));
    const blobs = join(h.dir, 'nomkfs-out', 'blobs', 'sha256');
    const manifest = JSON.parse(readFileSync(join(blobs, r.digest.slice(7)), 'utf8')) as { config: { digest: string }; layers: Array<{ digest: string; size: number }> };
    const config = JSON.parse(readFileSync(join(blobs, manifest.config.digest.slice(7)), 'utf8')) as { rootfs: { diff_ids: string[] } };
    const base = 'sha256:a8b5fca80efae55088290f3da8110d7742de55c2a378d5ab53226a483f390e21';
    assert.deepEqual(manifest.layers.map((l) => l.digest)[0], base);
    assert.equal(manifest.layers[0]?.size, 4739584);
    assert.deepEqual(config.rootfs.diff_ids, manifest.layers.map((l) => l.digest));
    assert.ok((manifest.layers[1]?.size as number) < 100_000, 'the hello layer holds only its own blocks');
    await h.withMount(out, (mnt) => {
      assert.equal(sha256(readFileSync(join(mnt, 'hello'))), sha256(originalHello()));
      const run = spawnSync('chroot', [mnt, '/hello'], { encoding: 'utf8', timeout: 30_000 });
      assert.match(run.stdout, /Hello from Docker!/);
    });
  });

  test('busybox as a one-layer image runs under chroot', { timeout: 120_000 }, async () => {
    const busybox = readFileSync('/usr/bin/busybox');
    const tar = buildTar([
      { path: 'bin/', type: 'directory' },
      { path: 'bin/busybox', type: 'file', data: busybox, mode: 0o755 },
      { path: 'bin/sh', type: 'symlink', linkpath: 'busybox' },
      { path: 'tmp/', type: 'directory', mode: 0o1777 },
    ]);
    const src = await writeTestImage(join(h.dir, 'busybox'), { tag: 'latest', layers: [{ tar, compression: 'gzip' }] });
    const out = `oci:${join(h.dir, 'busybox-out')}:obd`;
    await h.convert(src, out, '--work-dir', h.work, '--no-db');
    await h.withMount(out, (mnt) => {
      const run = spawnSync('chroot', [mnt, '/bin/busybox', 'echo', 'hi'], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(run.status, 0, run.stderr);
      assert.equal(run.stdout, 'hi\n');
      const sh = spawnSync('chroot', [mnt, '/bin/sh', '-c', 'echo from sh'], { encoding: 'utf8', timeout: 30_000 });
      assert.equal(sh.stdout, 'from sh\n');
    });
  });

  test('obd apply (overlaybd-apply): a layer onto a config upper with --mkfs', { timeout: 120_000 }, async () => {
    const layerDir = join(h.dir, 'apply');
    mkdirSync(layerDir);
    const data = join(layerDir, 'writable_data');
    const index = join(layerDir, 'writable_index');
    await h.obd('create', data, index, '1', '-s');
    const cfg = join(layerDir, 'config.json');
    writeFileSync(cfg, JSON.stringify({ lowers: [], upper: { data, index } }));
    const input = join(layerDir, 'layer.tar.gz');
    copyFileSync(HELLO_LAYER, input);
    const out = await h.obd('apply', input, cfg, '--mkfs', '--checksum', 'sha256:01bb4fce3eb1b56b05adf99504dafd31907a5aadac736e36b27595c8b92f07f1', '--run-dir', h.runDir);
    assert.match(out, /1 entries, 1 files \(13256 bytes\)/);
    const commit = join(layerDir, 'overlaybd.commit');
    await h.obd('commit', data, index, commit, '-z', '-t');
    const stack = join(layerDir, 'stack.json');
    writeFileSync(stack, JSON.stringify({ lowers: [{ file: commit }] }));
    await h.withMount(stack, (mnt) => {
      assert.equal(sha256(readFileSync(join(mnt, 'hello'))), sha256(originalHello()));
    });
    const bad = await h.obdFails(['apply', input, cfg, '--checksum', `sha256:${'0'.repeat(64)}`, '--run-dir', h.runDir]);
    assert.match(bad.stderr, /hashes to sha256:01bb4fce/);
    h.assertNothingLeft();
  });
});
