/**
 * Issue 3 acceptance against Debian's docker-registry, in all three auth modes: `obd
 * push` the upstream hello-world overlaybd image from its local OCI layout, `obd config`
 * its device config from the registry, `obd export` it remotely; the result equals the
 * local export byte for byte.
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { main } from '../src/cli/main.ts';
import { memoryIo } from '../src/cli/io.ts';
import { startRegistry, type TestRegistry, type RegistryAuthMode } from './support/registry.ts';
import { FIXTURES } from './support/shared.ts';
import { assertSameSparseFile } from './support/sparse-compare.ts';

const LAYOUT = `oci:${join(FIXTURES, 'hello-world-converted')}:amd64-converted`;
const LAYER_DIGEST = 'sha256:022231c3f1af70e0cc42f0c3781eabf174cff608210585bf93fc83e16d33672d';

let dir = '';
let localRaw = '';

async function obd(...args: string[]): Promise<string> {
  const io = memoryIo();
  const code = await main(args, io);
  assert.equal(code, 0, `obd ${args.join(' ')} exited ${code}: ${io.stderr}`);
  return io.stdout;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-reg-'));
  localRaw = join(dir, 'local.raw');
  await obd('export', LAYOUT, localRaw);
});
after(() => rmSync(dir, { recursive: true, force: true }));

for (const mode of ['none', 'basic', 'token'] as RegistryAuthMode[]) {
  describe(`registry with auth ${mode}`, () => {
    let reg: TestRegistry;
    let flags: string[] = [];
    before(async () => {
      reg = await startRegistry({ auth: mode });
      const dockerConfig = join(dir, `docker-${mode}.json`);
      const auth = Buffer.from(`${reg.username}:${reg.password}`).toString('base64');
      writeFileSync(dockerConfig, JSON.stringify({ auths: mode === 'none' ? {} : { [reg.host]: { auth } } }));
      flags = ['--plain-http', reg.host, '--docker-config', dockerConfig];
    });
    after(async () => reg.stop());

    test('push, config and remote export equal the local export', async () => {
      const ref = `${reg.host}/obd/hello-world:${mode}`;
      const pushed = await obd('push', LAYOUT, ref, ...flags);
      assert.match(pushed, /blobs copied/);
      const cfgPath = join(dir, `config-${mode}.json`);
      await obd('config', ref, cfgPath, ...flags);
      const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as { repoBlobUrl: string; lowers: Array<{ digest: string; size: number }> };
      assert.equal(cfg.repoBlobUrl, `http://${reg.host}/v2/obd/hello-world/blobs`);
      assert.deepEqual(cfg.lowers, [{ digest: LAYER_DIGEST, size: 642560 }]);
      const remoteRaw = join(dir, `remote-${mode}.raw`);
      const out = await obd('export', cfgPath, remoteRaw, ...flags);
      assert.match(out, /range requests/);
      assertSameSparseFile(remoteRaw, localRaw);
      rmSync(remoteRaw);
      const info = await obd('info', ref, ...flags);
      assert.match(info, /1 layers/);
      assert.match(info, /uuid 01BB4FCE-3EB1-B56B-05AD-F99504DAFD31/);
      assert.match(info, /515 valid entries/);
      // pushing again copies nothing
      assert.match(await obd('push', LAYOUT, ref, ...flags), /0 blobs copied/);
    });

    if (mode !== 'none') {
      test('without credentials the registry refuses with a clear error that carries no secret', async () => {
        const io = memoryIo();
        const empty = join(dir, 'empty.json');
        writeFileSync(empty, '{"auths":{}}');
        const code = await main(['config', `${reg.host}/obd/hello-world:${mode}`, '--plain-http', reg.host, '--docker-config', empty], io);
        assert.equal(code, 9, io.stderr);
        assert.ok(!io.stderr.includes(reg.password));
      });
    }
  });
}
