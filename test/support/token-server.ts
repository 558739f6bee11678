/**
 * A small Docker token-auth server (the "Bearer" half of registry auth) for tests.
 *
 * It answers `GET /token?service=…&scope=…&scope=…` with an RS256 JWT carrying an `x5c`
 * header (a self-signed certificate generated with the `openssl` CLI; the same file is the
 * registry's `auth.token.rootcertbundle`). Basic credentials are checked against one
 * user; a known user is granted every action it asks for, an anonymous caller is granted
 * `pull` only when `anonymousPull` is set, wrong credentials get 401.
 *
 * Fault injection for token-refresh tests: `issueExpired(n)` makes the next `n` tokens
 * already expired (beyond the registry's 60 s leeway) while the response still claims a
 * long `expires_in`; `expiresIn` sets the lifetime the response reports.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createPrivateKey, createSign, randomUUID, X509Certificate } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';

/** Paths of a self-signed certificate and its private key (PEM). */
export interface CertFiles {
  certPath: string;
  keyPath: string;
}

/**
 * Generates a self-signed RSA certificate with the `openssl` CLI into `dir`.
 * `ipSan` adds an IP subjectAltName (for TLS servers on 127.0.0.1).
 */
export function createSelfSignedCert(dir: string, name: string, ipSan?: string): CertFiles {
  const certPath = join(dir, `${name}.crt`);
  const keyPath = join(dir, `${name}.key`);
  const args = ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', `/CN=${name}`];
  if (ipSan !== undefined) args.push('-addext', `subjectAltName=IP:${ipSan}`);
  execFileSync('openssl', args, { stdio: 'ignore', timeout: 30_000 });
  return { certPath, keyPath };
}

/** One issued token as the server saw it (for assertions). */
export interface IssuedToken {
  token: string;
  scopes: string[];
  user: string | undefined;
  expired: boolean;
}

export interface TokenServerOptions {
  dir: string;
  service: string;
  issuer: string;
  username: string;
  password: string;
  /** `expires_in` reported in responses (seconds); the JWT lives as long unless expired on purpose. */
  expiresIn?: number;
  /** Answer with `access_token` instead of `token`. */
  field?: 'token' | 'access_token';
  anonymousPull?: boolean;
}

export interface TokenServer {
  readonly url: string;
  readonly realm: string;
  readonly certPath: string;
  readonly issued: IssuedToken[];
  /** Number of `/token` requests received (including refused ones). */
  readonly requests: number;
  /** Make the next `n` tokens already expired although the response claims a long lifetime. */
  issueExpired(n: number): void;
  setExpiresIn(seconds: number): void;
  /** Answer with `token` or `access_token` from now on. */
  setField(field: 'token' | 'access_token'): void;
  close(): Promise<void>;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

function signJwt(claims: object, key: KeyObject, certDer: Buffer): string {
  const header = { typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = createSign('RSA-SHA256').update(input).sign(key);
  return `${input}.${b64url(signature)}`;
}

function parseBasic(req: IncomingMessage): { user: string; password: string } | undefined {
  const h = req.headers.authorization;
  if (h === undefined || !/^basic /i.test(h)) return undefined;
  const decoded = Buffer.from(h.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** Parses `repository:name:a,b` scopes into the JWT `access` claim form. */
function parseScope(scope: string): { type: string; name: string; actions: string[] } | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return undefined;
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions: scope.slice(last + 1).split(',').filter(Boolean) };
}

/** Starts the token server on 127.0.0.1 with a fresh self-signed signing certificate. */
export async function startTokenServer(options: TokenServerOptions): Promise<TokenServer> {
  const cert = createSelfSignedCert(options.dir, 'token-signer');
  const key = createPrivateKey(readFileSync(cert.keyPath));
  const certDer = Buffer.from(new X509Certificate(readFileSync(cert.certPath)).raw);
  const issued: IssuedToken[] = [];
  let requests = 0;
  let expiredLeft = 0;
  let expiresIn = options.expiresIn ?? 300;
  let field = options.field ?? 'token';

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    requests++;
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/token' || req.method !== 'GET') {
      res.writeHead(404).end();
      return;
    }
    const creds = parseBasic(req);
    if (creds !== undefined && (creds.user !== options.username || creds.password !== options.password)) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"incorrect username or password"}');
      return;
    }
    const scopes = url.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
    const access = scopes
      .map(parseScope)
      .filter((a) => a !== undefined)
      .map((a) => ({ ...a, actions: creds !== undefined ? a.actions : options.anonymousPull === true ? a.actions.filter((x) => x === 'pull') : [] }));
    const now = Math.floor(Date.now() / 1000);
    const expired = expiredLeft > 0;
    if (expired) expiredLeft--;
    const exp = expired ? now - 3600 : now + expiresIn;
    const claims = {
      iss: options.issuer,
      sub: creds?.user ?? '',
      aud: url.searchParams.get('service') ?? options.service,
      exp,
      nbf: now - 7200,
      iat: now - 7200,
      jti: randomUUID(),
      access,
    };
    const token = signJwt(claims, key, certDer);
    issued.push({ token, scopes, user: creds?.user, expired });
    const body = { [field]: token, expires_in: expiresIn, issued_at: new Date().toISOString() };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };

  const server = createServer(handler);
  server.keepAliveTimeout = 1000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    realm: `${url}/token`,
    certPath: cert.certPath,
    issued,
    get requests() {
      return requests;
    },
    issueExpired(n: number) {
      expiredLeft = n;
    },
    setExpiresIn(seconds: number) {
      expiresIn = seconds;
    },
    setField(f: 'token' | 'access_token') {
      field = f;
    },
    close() {
      return new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      });
    },
  };
}
