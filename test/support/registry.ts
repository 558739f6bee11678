/**
 * Test harness: a real OCI registry (Debian's `docker-registry` 2.8, the CNCF distribution
 * server) on 127.0.0.1 with a temporary root directory, in one of three auth modes:
 *
 * - `none`: open registry;
 * - `basic`: htpasswd file made with `htpasswd -Bbn` (apache2-utils);
 * - `token`: Bearer tokens from the in-process token server of `token-server.ts`.
 *
 * `tls: true` serves HTTPS with a self-signed certificate (for `insecure` client tests).
 * The registry runs in its own process group; `stop()` kills the group and removes the
 * temp directory, and a process `exit` hook does the same if a test run dies early.
 *
 * @example
 * ```ts
 * const reg = await startRegistry({ auth: 'token' });
 * after(() => reg.stop());
 * ```
 */
import { spawn, execFileSync } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request as httpsRequest } from 'node:https';
import { startTokenServer, createSelfSignedCert } from './token-server.ts';
import type { TokenServer, TokenServerOptions } from './token-server.ts';

export type RegistryAuthMode = 'none' | 'basic' | 'token';

export interface StartRegistryOptions {
  auth: RegistryAuthMode;
  /** Serve HTTPS with a self-signed certificate for 127.0.0.1. */
  tls?: boolean;
  /** Token server options (token mode only). */
  token?: Partial<Pick<TokenServerOptions, 'expiresIn' | 'field' | 'anonymousPull'>>;
  /** Milliseconds to wait for the registry to answer `/v2/` (default 15000). */
  readyTimeoutMs?: number;
}

export interface TestRegistry {
  /** Base URL, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  /** `127.0.0.1:PORT`, the registry part of references. */
  readonly host: string;
  readonly username: string;
  readonly password: string;
  readonly rootDir: string;
  /** CA certificate of the TLS listener (when `tls`). */
  readonly tlsCertPath: string | undefined;
  readonly tokenServer: TokenServer | undefined;
  stop(): Promise<void>;
}

const USERNAME = 'obd-user';
const PASSWORD = 'Secr3t:pass,word"x';

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with the HTTP status of `GET /v2/`, or undefined when nothing answers. */
async function probe(url: string, tls: boolean): Promise<number | undefined> {
  if (!tls) {
    try {
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(2000) });
      await res.body?.cancel();
      return res.status;
    } catch {
      return undefined;
    }
  }
  return new Promise((resolve) => {
    const req = httpsRequest(`${url}/v2/`, { rejectUnauthorized: false, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on('error', () => resolve(undefined));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

function registryConfig(o: { rootDir: string; port: number; auth: string; tls: string }): string {
  return [
    'version: 0.1',
    'log:',
    '  level: error',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${o.rootDir}`,
    '  delete:',
    '    enabled: true',
    'http:',
    `  addr: 127.0.0.1:${o.port}`,
    '  secret: obd-test-secret',
    o.tls,
    o.auth,
  ]
    .filter((l) => l !== '')
    .join('\n');
}

/** Starts a registry; rejects (after cleaning up) if it is not ready in time. */
export async function startRegistry(options: StartRegistryOptions): Promise<TestRegistry> {
  const dir = mkdtempSync(join(tmpdir(), 'obd-registry-'));
  const rootDir = join(dir, 'storage');
  mkdirSync(rootDir);
  let tokenServer: TokenServer | undefined;
  let child: ChildProcess | undefined;
  let stderr = '';

  const killGroup = (): void => {
    if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };
  const onExit = (): void => {
    killGroup();
    rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', onExit);

  const stop = async (): Promise<void> => {
    process.removeListener('exit', onExit);
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const exited = new Promise<void>((resolve) => {
        child?.once('exit', () => resolve());
        timer = setTimeout(resolve, 5000);
      });
      killGroup();
      await exited;
      clearTimeout(timer);
    }
    await tokenServer?.close();
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    let auth = '';
    if (options.auth === 'basic') {
      const line = execFileSync('htpasswd', ['-Bbn', USERNAME, PASSWORD], { encoding: 'utf8', timeout: 30_000 }).trim();
      writeFileSync(join(dir, 'htpasswd'), `${line}\n`);
      auth = ['auth:', '  htpasswd:', '    realm: obd-test', `    path: ${join(dir, 'htpasswd')}`].join('\n');
    } else if (options.auth === 'token') {
      tokenServer = await startTokenServer({ dir, service: 'obd-test-registry', issuer: 'obd-test-issuer', username: USERNAME, password: PASSWORD, ...options.token });
      auth = [
        'auth:',
        '  token:',
        `    realm: ${tokenServer.realm}`,
        '    service: obd-test-registry',
        '    issuer: obd-test-issuer',
        `    rootcertbundle: ${tokenServer.certPath}`,
      ].join('\n');
    }
    let tls = '';
    let tlsCertPath: string | undefined;
    if (options.tls === true) {
      const cert = createSelfSignedCert(dir, 'registry-tls', '127.0.0.1');
      tlsCertPath = cert.certPath;
      tls = ['  tls:', `    certificate: ${cert.certPath}`, `    key: ${cert.keyPath}`].join('\n');
    }

    const deadline = Date.now() + (options.readyTimeoutMs ?? 15_000);
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      const configPath = join(dir, 'config.yml');
      writeFileSync(configPath, registryConfig({ rootDir, port, auth, tls }));
      stderr = '';
      const proc = spawn('docker-registry', ['serve', configPath], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
      child = proc;
      proc.stderr?.setEncoding('utf8');
      proc.stderr?.on('data', (d: string) => {
        stderr = (stderr + d).slice(-4000);
      });
      const url = `${options.tls === true ? 'https' : 'http'}://127.0.0.1:${port}`;
      while (Date.now() < deadline && proc.exitCode === null && proc.signalCode === null) {
        const status = await probe(url, options.tls === true);
        if (status === 200 || status === 401) {
          const host = `127.0.0.1:${port}`;
          return { url, host, username: USERNAME, password: PASSWORD, rootDir, tlsCertPath, tokenServer, stop };
        }
        await sleep(50);
      }
      killGroup();
      // A lost race for the port makes the registry exit at once: try another port.
      if (Date.now() >= deadline || attempt >= 4) {
        throw new Error(`Cannot start docker-registry on port ${port}: not ready (stderr: ${stderr.trim() || 'empty'})`);
      }
    }
  } catch (e) {
    await stop();
    throw e;
  }
}
