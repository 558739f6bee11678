/**
 * The architecture as a test (STYLE.md §10, §12): the data path's folders import only
 * folders before them, frontends import only `io/`, `formats/` never reaches the
 * network, file names are kebab-case and runtime dependencies stay on a written list.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, dirname, resolve } from 'node:path';
import { REPO_ROOT } from './support/shared.ts';

const SRC = join(REPO_ROOT, 'src');
const ORDER = ['native', 'io', 'formats', 'registry', 'cache', 'image', 'device', 'fuse', 'nbd', 'attach', 'convert', 'snapshotter', 'cli'];
const FRONTENDS = new Set(['fuse', 'nbd']);
const RUNTIME_DEPENDENCY_ALLOWLIST = new Set(['undici', '@grpc/grpc-js', '@grpc/proto-loader', 'protobufjs', 'better-sqlite3', 'pg']);
const NETWORK_MODULES = /^(node:)?(net|http|https|http2|tls|dgram|dns)$|^undici|^@grpc\//;

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? walk(p) : [p];
  });
}

function imports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)[^'"]*?from\s*['"]([^'"]+)['"]/g)) out.push(m[1] as string);
  for (const m of text.matchAll(/import\(\s*['"]([^'"]+)['"]\s*\)/g)) out.push(m[1] as string);
  return out;
}

const files = walk(SRC).filter((f) => f.endsWith('.ts'));

test('every source folder is a known layer of the data path', () => {
  for (const f of files) {
    const top = relative(SRC, f).split('/')[0] as string;
    assert.ok(ORDER.includes(top), `${relative(REPO_ROOT, f)} is outside the known layers ${ORDER.join(', ')}`);
  }
});

test('each folder imports only folders before it; frontends only io/', () => {
  const problems: string[] = [];
  for (const f of files) {
    if (f.endsWith('.test.ts')) continue;
    const from = relative(SRC, f).split('/')[0] as string;
    for (const spec of imports(f)) {
      if (!spec.startsWith('.')) {
        if (from === 'formats' && NETWORK_MODULES.test(spec)) problems.push(`${relative(REPO_ROOT, f)} imports ${spec}`);
        continue;
      }
      const target = resolve(dirname(f), spec);
      const rel = relative(SRC, target);
      if (rel.startsWith('..')) {
        problems.push(`${relative(REPO_ROOT, f)} imports ${spec} from outside src/`);
        continue;
      }
      const to = rel.split('/')[0] as string;
      if (to === from) continue;
      const before = ORDER.indexOf(to) < ORDER.indexOf(from);
      const ok = FRONTENDS.has(from) ? to === 'io' || to === 'native' : before && (!FRONTENDS.has(to) || ORDER.indexOf(from) >= ORDER.indexOf('attach'));
      if (!ok) problems.push(`${relative(REPO_ROOT, f)} (${from}/) imports ${spec} (${to}/)`);
    }
  }
  assert.deepEqual(problems, []);
});

test('file names are kebab-case', () => {
  const bad = [...files, ...walk(join(REPO_ROOT, 'test')), ...walk(join(REPO_ROOT, 'bench'))]
    .map((f) => relative(REPO_ROOT, f))
    .filter((f) => !/^[a-z0-9/_.-]+$/.test(f) || /[A-Z]/.test(f.split('/').pop()!.replace(/\.(md)$/, '').replace(/^(README|FORMAT)$/, '')));
  assert.deepEqual(bad, []);
});

test('runtime dependencies stay on the allowlist', () => {
  const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  const extra = Object.keys(pkg.dependencies ?? {}).filter((d) => !RUNTIME_DEPENDENCY_ALLOWLIST.has(d));
  assert.deepEqual(extra, []);
});

test('library code never writes to the terminal', () => {
  const offenders = files
    .filter((f) => !relative(SRC, f).startsWith('cli/') && !f.endsWith('.test.ts'))
    .filter((f) => /\b(console\.\w+|process\.(stdout|stderr)\.write)\s*\(/.test(readFileSync(f, 'utf8')))
    .map((f) => relative(REPO_ROOT, f));
  assert.deepEqual(offenders, []);
});
