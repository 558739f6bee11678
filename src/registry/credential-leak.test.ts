/**
 * No credential ever leaks: for every auth mode (Basic, Bearer; credentials given
 * directly, from cred.json and from docker config.json) and every failure (wrong or
 * missing password, unknown manifest and blob, invalid manifest, token server down,
 * registry down), neither the thrown errors (message, stack, cause chain, own
 * properties), nor the `obd:registry:request` events, nor the `NODE_DEBUG=obd` debug
 * log contain the password, the Basic header value, or any issued token.
 *
 * `util.debuglog` reads NODE_DEBUG at process start, so the operations run in a child
 * process (this same file with OBD_LEAK_CHILD set) and the parent inspects its output.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { subscribe } from 'node:diagnostics_channel';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import { startRegistry } from '../../test/support/registry.ts';
import type { TestRegistry } from '../../test/support/registry.ts';
import { REPO_ROOT } from '../../test/support/shared.ts';
import { RegistryClient } from './client.ts';
import { credJsonCredentials, dockerConfigCredentials, staticCredentials } from './credentials.ts';
import type { CredentialProvider } from './credentials.ts';
import { digestOf } from './digest.ts';
import { REQUEST_CHANNEL } from './instrumentation.ts';

const WRONG = 'wrong-Pw-123';

interface Target {
  name: string;
  host: string;
  username: string;
  password: string;
  credDir: string;
}

/** Renders everything an error exposes, down the cause chain. */
function dump(e: unknown): string {
  const parts: string[] = [inspect(e, { depth: 20, showHidden: true })];
  for (let cur = e, i = 0; cur instanceof Error && i < 10; cur = cur.cause, i++) {
    parts.push(cur.message, cur.stack ?? '', JSON.stringify(Object.entries(cur)));
  }
  return parts.join('\n');
}

async function childMain(): Promise<void> {
  const targets = JSON.parse(process.env['OBD_LEAK_TARGETS'] ?? '[]') as Target[];
  const out: { op: string; outcome: string; dump: string }[] = [];
  const events: unknown[] = [];
  subscribe(REQUEST_CHANNEL, (e) => events.push(e));
  for (const t of targets) {
    writeFileSync(join(t.credDir, 'cred.json'), JSON.stringify({ auths: { [t.host]: { username: t.username, password: t.password } } }));
    writeFileSync(join(t.credDir, 'config.json'), JSON.stringify({ auths: { [t.host]: { auth: Buffer.from(`${t.username}:${WRONG}`).toString('base64') } } }));
    const providers: [string, CredentialProvider][] = [
      ['static', staticCredentials({ [t.host]: { username: t.username, password: t.password } })],
      ['static-wrong', staticCredentials({ [t.host]: { username: t.username, password: WRONG } })],
      ['cred.json', credJsonCredentials(join(t.credDir, 'cred.json'))],
      ['docker-config-wrong', dockerConfigCredentials({ env: { DOCKER_CONFIG: t.credDir } })],
    ];
    for (const [label, credentials] of providers) {
      const client = new RegistryClient({ plainHttp: [t.host], credentials, retry: { attempts: 2, baseDelayMs: 1 } });
      const repo = `${t.host}/leak/app`;
      const ops: [string, () => Promise<unknown>][] = [
        ['push blob', () => client.pushBlob(repo, new TextEncoder().encode(`blob for ${label}`))],
        ['get missing manifest', () => client.getManifest(`${repo}:missing`)],
        ['head manifest', () => client.headManifest(`${repo}:missing`)],
        ['range of missing blob', () => client.getBlobRange(repo, digestOf(new TextEncoder().encode('none')), { offset: 0, length: 4 })],
        ['stream missing blob', () => client.getBlob(repo, digestOf(new TextEncoder().encode('none')))],
        ['push invalid manifest', () => client.pushManifest(`${repo}:bad`, { bytes: new TextEncoder().encode('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":"sha256:' + '1'.repeat(64) + '","size":1,"mediaType":"x"},"layers":[]}') })],
      ];
      for (const [op, run] of ops) {
        try {
          await run();
          out.push({ op: `${t.name}/${label}/${op}`, outcome: 'ok', dump: '' });
        } catch (e) {
          out.push({ op: `${t.name}/${label}/${op}`, outcome: (e as Error).name, dump: dump(e) });
        }
      }
      await client.close();
    }
  }
  process.stdout.write(JSON.stringify({ results: out, events }));
}

async function runChild(targets: Target[]): Promise<{ stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url)], {
    cwd: REPO_ROOT,
    env: { ...process.env, NODE_DEBUG: 'obd', OBD_LEAK_CHILD: '1', OBD_LEAK_TARGETS: JSON.stringify(targets) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  const code = await new Promise<number | null>((r) => child.once('exit', r));
  clearTimeout(timer);
  assert.equal(code, 0, `child failed: ${stderr.slice(-2000)}`);
  return { stdout, stderr };
}

function secretsOf(reg: TestRegistry): string[] {
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  const tokens = (reg.tokenServer?.issued ?? []).flatMap((t) => [t.token, t.token.split('.')[2] as string]);
  return [reg.password, WRONG, b64(`${reg.username}:${reg.password}`), b64(`${reg.username}:${WRONG}`), ...tokens];
}

function assertClean(output: string, secrets: string[], where: string): void {
  for (const s of secrets) assert.ok(!output.includes(s), `${where} contains a secret (${s.slice(0, 4)}…)`);
}

if (process.env['OBD_LEAK_CHILD'] === '1') {
  await childMain();
} else {
  const dir = mkdtempSync(join(tmpdir(), 'obd-leak-'));
  const registries: TestRegistry[] = [];
  after(async () => {
    await Promise.all(registries.map((r) => r.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  test('no error, event or debug line carries credentials, for every auth mode and failure', async () => {
    const [basic, token] = await Promise.all([startRegistry({ auth: 'basic' }), startRegistry({ auth: 'token' })]);
    registries.push(basic, token);
    const target = (name: string, reg: TestRegistry): Target => {
      const credDir = join(dir, name);
      mkdirSync(credDir, { recursive: true });
      return { name, host: reg.host, username: reg.username, password: reg.password, credDir };
    };
    const targets = [target('basic', basic), target('token', token)];

    // 1: both registries up.
    const up = await runChild(targets);
    const parsed = JSON.parse(up.stdout) as { results: { op: string; outcome: string }[]; events: unknown[] };
    const outcome = (op: string): string | undefined => parsed.results.find((r) => r.op === op)?.outcome;
    assert.equal(outcome('basic/static/push blob'), 'ok');
    assert.equal(outcome('token/cred.json/push blob'), 'ok');
    assert.equal(outcome('basic/static-wrong/push blob'), 'PermissionDeniedError');
    assert.equal(outcome('token/docker-config-wrong/get missing manifest'), 'PermissionDeniedError');
    assert.equal(outcome('token/static/get missing manifest'), 'NotFoundError');
    assert.equal(outcome('basic/cred.json/range of missing blob'), 'NotFoundError');
    assert.equal(outcome('token/static/push invalid manifest'), 'InvalidArgumentError');
    assert.ok(parsed.events.length > 50);
    assert.match(up.stderr, /OBD \d+: registry: token for repository:leak\/app/, 'the debug log was captured');

    // 2: token server down, then both registries down.
    await token.tokenServer?.close();
    const noTokens = await runChild([targets[1] as Target]);
    assert.match(noTokens.stdout, /UnavailableError/);
    await Promise.all([basic.stop(), token.stop()]);
    const down = await runChild(targets);
    assert.match(down.stdout, /ECONNREFUSED/);

    const secrets = [...secretsOf(basic), ...secretsOf(token)];
    assert.ok((token.tokenServer?.issued.length ?? 0) >= 4, `tokens were issued: ${token.tokenServer?.issued.length}`);
    for (const [name, run] of [
      ['up', up],
      ['no token server', noTokens],
      ['down', down],
    ] as const) {
      assertClean(run.stdout, secrets, `${name}: errors and events`);
      assertClean(run.stderr, secrets, `${name}: debug log`);
    }
  });
}
