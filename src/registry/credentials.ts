/**
 * Where registry credentials come from.
 *
 * A {@link CredentialProvider} is asked with the registry host (`host[:port]` as used on the
 * wire, e.g. `registry-1.docker.io`) and the repository each time the client needs to
 * authenticate, so edits to the files take effect without a restart (runtime.md §4).
 *
 * - {@link dockerConfigCredentials}: Docker's `config.json` (`$DOCKER_CONFIG/config.json`,
 *   else `~/.docker/config.json`): `credHelpers`, `credsStore` (`docker-credential-*`
 *   programs), then `auths` entries with `auth` (base64 `user:pass`) or
 *   `username`/`password`. Keys may be URLs (`https://index.docker.io/v1/`); Docker Hub's
 *   names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one registry.
 * - {@link credJsonCredentials}: upstream overlaybd's `cred.json` with its exact matching
 *   rules (runtime.md §4.1): candidates `HOST`, `HOST/SEG1`, `HOST/SEG1/SEG2`, … up to the
 *   full repository; `auths` entries in document order, the first whose key equals a
 *   candidate wins; `auth` (split at the first `:`) beats `username`/`password`; an `auth`
 *   without `:` and an entry without usable fields are skipped.
 *
 * Missing files mean anonymous access. Malformed files throw `InvalidArgumentError`
 * naming the file but never quoting its content.
 *
 * @example
 * ```ts
 * const client = new RegistryClient({
 *   credentials: chainCredentials(credJsonCredentials('/opt/overlaybd/cred.json'), dockerConfigCredentials()),
 * });
 * ```
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { debuglog } from 'node:util';
import { InvalidArgumentError } from '../io/errors.ts';

const debug = debuglog('obd');

export interface Credentials {
  readonly username: string;
  readonly password: string;
}

/** Returns the credentials for `repository` on `host`, or undefined for anonymous access. */
export type CredentialProvider = (host: string, repository: string) => Promise<Credentials | undefined>;

const DOCKER_HUB = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/** Docker Hub's legacy key in `config.json`. */
const DOCKER_HUB_KEY = 'https://index.docker.io/v1/';

/** Reads a JSON file; undefined when it does not exist. */
async function readJson(path: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as { code?: string }).code === 'ENOENT') return undefined;
    throw new InvalidArgumentError(`Cannot read ${what} ${path}: ${(e as { code?: string }).code ?? 'read failed'}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch {
    // The parser's message quotes the input, which may hold secrets: say where only.
    throw new InvalidArgumentError(`Cannot parse ${what} ${path}: not valid JSON`);
  }
}

function decodeAuth(auth: string): Credentials | undefined {
  const decoded = Buffer.from(auth, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** Credentials from one `auths` entry: `auth` first, then `username` + `password`. */
function entryCredentials(entry: unknown): Credentials | undefined {
  if (entry === null || typeof entry !== 'object') return undefined;
  const { auth, username, password } = entry as { auth?: unknown; username?: unknown; password?: unknown };
  if (typeof auth === 'string' && auth !== '') return decodeAuth(auth);
  if (typeof username === 'string' && typeof password === 'string') return { username, password };
  return undefined;
}

function authsOf(doc: unknown): [string, unknown][] {
  const auths = (doc as { auths?: unknown } | null | undefined)?.auths;
  if (auths === null || typeof auths !== 'object') return [];
  return Object.entries(auths as Record<string, unknown>);
}

/** The candidate keys of runtime.md §4.1: `host`, `host/seg1`, …, `host/<repository>`. */
export function credentialCandidates(host: string, repository: string): string[] {
  const out = [host];
  let prefix = host;
  for (const seg of repository.split('/').filter(Boolean)) {
    prefix += `/${seg}`;
    out.push(prefix);
  }
  return out;
}

/**
 * Matches a cred.json-style document exactly as upstream overlaybd does (runtime.md §4.1).
 * Exported for tests and for the `http` credential mode, which returns the same document.
 */
export function matchCredentialDocument(doc: unknown, host: string, repository: string): Credentials | undefined {
  const candidates = new Set(credentialCandidates(host, repository));
  for (const [key, entry] of authsOf(doc)) {
    if (!candidates.has(key)) continue;
    if (entry === null || typeof entry !== 'object') continue;
    const { auth, username, password } = entry as { auth?: unknown; username?: unknown; password?: unknown };
    if (auth !== undefined) {
      const creds = typeof auth === 'string' ? decodeAuth(auth) : undefined;
      if (creds === undefined) continue; // no ':' in the decoded auth: skipped
      return creds;
    }
    if (typeof username === 'string' && typeof password === 'string') return { username, password };
  }
  return undefined;
}

/** Upstream overlaybd's `cred.json` (re-read on every call). */
export function credJsonCredentials(path: string): CredentialProvider {
  return async (host, repository) => {
    const doc = await readJson(path, 'credential file');
    return doc === undefined ? undefined : matchCredentialDocument(doc, host, repository);
  };
}

/** Normalises a `config.json` key (`https://host:5000/v1/`) to `host:5000`. */
export function normalizeConfigKey(key: string): string {
  return key
    .replace(/^[a-z][a-z0-9+.-]*:\/\//i, '')
    .replace(/\/.*$/, '')
    .toLowerCase();
}

function sameRegistry(a: string, b: string): boolean {
  return a === b || (DOCKER_HUB.has(a) && DOCKER_HUB.has(b));
}

/** Runs `docker-credential-<helper> get` for `serverUrl` (10 s timeout). */
function runHelper(helper: string, serverUrl: string): Promise<Credentials | undefined> {
  return new Promise((resolve, reject) => {
    const child = execFile(`docker-credential-${helper}`, ['get'], { timeout: 10_000, maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err !== null) {
        // "credentials not found" exits non-zero: anonymous. Never echo stdout/stderr (secrets).
        if ((err as { code?: unknown }).code === 'ENOENT') {
          reject(new InvalidArgumentError(`Cannot run credential helper docker-credential-${helper}: not found in PATH`));
          return;
        }
        debug('registry: credential helper %s has no entry for %s', helper, serverUrl);
        resolve(undefined);
        return;
      }
      try {
        const out = JSON.parse(stdout) as { Username?: unknown; Secret?: unknown };
        if (typeof out.Username === 'string' && typeof out.Secret === 'string') {
          resolve({ username: out.Username, password: out.Secret });
        } else resolve(undefined);
      } catch {
        reject(new InvalidArgumentError(`Cannot use credential helper docker-credential-${helper}: output is not valid JSON`));
      }
    });
    child.stdin?.end(serverUrl);
  });
}

export interface DockerConfigOptions {
  /** Explicit `config.json` path; default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. */
  readonly path?: string;
  /** Environment to read `DOCKER_CONFIG` and `HOME` from (default `process.env`). */
  readonly env?: Readonly<Record<string, string | undefined>>;
}

/** Where Docker keeps `config.json` for `options`. */
export function dockerConfigPath(options: DockerConfigOptions = {}): string {
  if (options.path !== undefined) return options.path;
  const env = options.env ?? process.env;
  const dir = env['DOCKER_CONFIG'] ?? join(env['HOME'] ?? homedir(), '.docker');
  return join(dir, 'config.json');
}

/** Docker's `config.json` (re-read on every call). */
export function dockerConfigCredentials(options: DockerConfigOptions = {}): CredentialProvider {
  const path = dockerConfigPath(options);
  return async (host) => {
    const doc = (await readJson(path, 'docker config')) as
      | { auths?: unknown; credHelpers?: Record<string, unknown>; credsStore?: unknown }
      | undefined;
    if (doc === undefined || doc === null || typeof doc !== 'object') return undefined;
    const wanted = host.toLowerCase();
    const hub = DOCKER_HUB.has(wanted);
    const serverUrl = hub ? DOCKER_HUB_KEY : wanted;
    for (const [key, helper] of Object.entries(doc.credHelpers ?? {})) {
      if (typeof helper === 'string' && sameRegistry(normalizeConfigKey(key), wanted)) return runHelper(helper, serverUrl);
    }
    if (typeof doc.credsStore === 'string' && doc.credsStore !== '') {
      const found = await runHelper(doc.credsStore, serverUrl);
      if (found !== undefined) return found;
    }
    const entries = authsOf(doc);
    // An exact key wins over an alias (a Docker Hub key under another of its names).
    const exact = entries.find(([key]) => normalizeConfigKey(key) === wanted);
    const alias = entries.find(([key]) => sameRegistry(normalizeConfigKey(key), wanted));
    return entryCredentials((exact ?? alias)?.[1]);
  };
}

/** Fixed credentials per host (`host[:port]`), e.g. from command-line flags. */
export function staticCredentials(byHost: Readonly<Record<string, Credentials>>): CredentialProvider {
  return async (host) => byHost[host] ?? Object.entries(byHost).find(([h]) => sameRegistry(h, host))?.[1];
}

/** Asks each provider in turn; the first answer wins. */
export function chainCredentials(...providers: CredentialProvider[]): CredentialProvider {
  return async (host, repository) => {
    for (const p of providers) {
      const found = await p(host, repository);
      if (found !== undefined) return found;
    }
    return undefined;
  };
}
