/**
 * Registry authentication as a transport wrapper (STYLE.md §6; runtime.md §5.1).
 *
 * Only requests that carry `auth` (scopes) are authenticated; others — redirect
 * targets, token requests — pass through untouched, so a redirect target never sees an
 * `Authorization` header.
 *
 * Per origin the wrapper learns how to authenticate once. A request that can be sent
 * again (no streamed body) goes out without credentials first: any answer but a
 * 401 (or a 403 with a challenge) means no auth, and a challenge is handled as a refusal
 * below, so an anonymous registry costs no extra round trip. A streamed upload to an
 * origin not met yet waits for a ping (`GET /v2/`, no credentials): 200 or any
 * non-401/403 status means no auth; a 401/403 challenge picks `Bearer` (preferred) or
 * `Basic`. Bearer tokens are fetched from
 * `realm?service=…&scope=…` with Basic credentials when the provider has some (anonymous
 * otherwise), accept `token` or `access_token`, and are cached per origin, service and
 * scope set until `expires_in` (default 60 s) minus a margin. Basic credentials are
 * asked for once per origin and repository.
 *
 * On a 401 the wrapper reads the new challenge (for example `error="insufficient_scope"`
 * with a wider `scope`, or an expired token), drops the cached token or credentials,
 * authenticates again and resends once — if the body can be replayed. Concurrent
 * refreshes share one token request.
 *
 * @example
 * ```ts
 * const t = withAuth(withRetry(createFetchTransport()), { credentials: dockerConfigCredentials() });
 * await t({ method: 'GET', url, auth: { scopes: ['repository:library/alpine:pull'] } });
 * ```
 */
import { debuglog } from 'node:util';
import { FailedPreconditionError, UnsupportedError } from '../io/errors.ts';
import { discardBody, readBody } from './_body.ts';
import { redactUrl } from './_redact.ts';
import { untilAborted } from './_signal.ts';
import { parseWwwAuthenticate } from './challenge.ts';
import type { Challenge } from './challenge.ts';
import type { CredentialProvider } from './credentials.ts';
import { errorFromResponse } from './errors.ts';
import { hasReplayableBody } from './transport.ts';
import type { HttpRequest, HttpResponse, HttpTransport } from './transport.ts';

const debug = debuglog('obd');

/** Token responses are read up to this size. */
const MAX_TOKEN_BODY = 1 << 20;
/** Lifetime assumed when a token response has no `expires_in` (Docker token spec). */
const DEFAULT_TOKEN_SECONDS = 60;

export interface AuthOptions {
  readonly credentials?: CredentialProvider;
  /** Clock in ms (tests). */
  readonly now?: () => number;
}

/** How an origin wants to be authenticated. */
export type AuthMethod =
  | { readonly kind: 'none' }
  | { readonly kind: 'basic' }
  | { readonly kind: 'bearer'; readonly realm: string; readonly service: string | undefined };

interface CachedToken {
  readonly token: string;
  readonly expiresAt: number;
}

/** Picks the auth method from the challenges of a 401/403 answer (Bearer preferred). */
export function authMethodOf(challenges: readonly Challenge[]): AuthMethod | undefined {
  const bearer = challenges.find((c) => c.scheme === 'bearer');
  if (bearer !== undefined) {
    const realm = bearer.params['realm'];
    if (realm === undefined || realm === '') return undefined;
    return { kind: 'bearer', realm, service: bearer.params['service'] };
  }
  if (challenges.some((c) => c.scheme === 'basic')) return { kind: 'basic' };
  return undefined;
}

/** The repository named by the first `repository:NAME:ACTIONS` scope ('' if none). */
function repositoryOf(scopes: readonly string[]): string {
  for (const s of scopes) {
    if (!s.startsWith('repository:')) continue;
    const last = s.lastIndexOf(':');
    if (last > 'repository:'.length) return s.slice('repository:'.length, last);
  }
  return '';
}

function withAuthorization(request: HttpRequest, header: string | undefined): HttpRequest {
  if (header === undefined) return request;
  return { ...request, headers: { ...request.headers, authorization: header } };
}

function basicHeader(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
}

interface AuthContext {
  readonly origin: string;
  readonly host: string;
  readonly repository: string;
  readonly scopes: readonly string[];
  readonly signal: AbortSignal | undefined;
}

/** Wraps `next` with ping, Basic/Bearer authentication, token caching and refresh on 401. */
export function withAuth(next: HttpTransport, options: AuthOptions = {}): HttpTransport {
  const now = options.now ?? Date.now;
  const methods = new Map<string, Promise<AuthMethod>>();
  const tokens = new Map<string, CachedToken>();
  const tokenRequests = new Map<string, Promise<CachedToken>>();
  const basics = new Map<string, string | undefined>();

  /** Shared by concurrent callers, so it runs without any caller's signal. */
  async function ping(origin: string): Promise<AuthMethod> {
    const url = new URL('/v2/', origin);
    const res = await next({ method: 'GET', url });
    await discardBody(res);
    if (res.status !== 401 && res.status !== 403) return { kind: 'none' };
    const header = res.headers.get('www-authenticate');
    if (header === null) return { kind: 'basic' };
    const method = authMethodOf(parseWwwAuthenticate(header));
    if (method === undefined) throw new UnsupportedError(`Cannot authenticate to ${origin}: unsupported challenge scheme`);
    return method;
  }

  function methodFor(origin: string, signal: AbortSignal | undefined): Promise<AuthMethod> {
    let p = methods.get(origin);
    if (p === undefined) {
      p = ping(origin);
      methods.set(origin, p);
      p.catch(() => methods.delete(origin));
    }
    return untilAborted(p, signal);
  }

  async function credentialsFor(ctx: AuthContext): Promise<{ username: string; password: string } | undefined> {
    return options.credentials === undefined ? undefined : options.credentials(ctx.host, ctx.repository);
  }

  /** Shared by concurrent callers, so it runs without any caller's signal. */
  async function fetchToken(method: Extract<AuthMethod, { kind: 'bearer' }>, ctx: AuthContext): Promise<CachedToken> {
    let url: URL;
    try {
      url = new URL(method.realm);
    } catch {
      throw new FailedPreconditionError(`Cannot get a registry token for ${ctx.origin}: realm is not a URL`);
    }
    if (method.service !== undefined) url.searchParams.set('service', method.service);
    for (const s of ctx.scopes) url.searchParams.append('scope', s);
    const creds = await credentialsFor(ctx);
    const started = now();
    const request: HttpRequest = {
      method: 'GET',
      url,
      ...(creds === undefined ? {} : { headers: { authorization: basicHeader(creds.username, creds.password) } }),
    };
    const res = await next(request);
    const action = `get a registry token for ${ctx.scopes.join(' ') || ctx.origin} from ${redactUrl(url.origin + url.pathname)}`;
    if (res.status !== 200) throw await errorFromResponse(res, request, action);
    const body = await readBody(res, MAX_TOKEN_BODY, {
      onOverflow: () => new FailedPreconditionError(`Cannot ${action}: answer exceeds ${MAX_TOKEN_BODY} bytes`),
    });
    let doc: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      doc = JSON.parse(new TextDecoder().decode(body)) as typeof doc;
    } catch {
      throw new FailedPreconditionError(`Cannot ${action}: answer is not JSON`);
    }
    const token = typeof doc.token === 'string' && doc.token !== '' ? doc.token : doc.access_token;
    if (typeof token !== 'string' || token === '') throw new FailedPreconditionError(`Cannot ${action}: answer has no token`);
    const seconds = typeof doc.expires_in === 'number' && doc.expires_in > 0 ? doc.expires_in : DEFAULT_TOKEN_SECONDS;
    const lifetime = seconds * 1000;
    debug('registry: token for %s (%d s)', ctx.scopes.join(' '), seconds);
    return { token, expiresAt: started + lifetime - Math.min(10_000, lifetime / 10) };
  }

  /** A valid token for `ctx`; `stale` (a token the registry refused) is never returned. */
  async function tokenFor(method: Extract<AuthMethod, { kind: 'bearer' }>, ctx: AuthContext, stale?: string): Promise<string> {
    const key = `${ctx.origin} ${method.realm} ${method.service ?? ''} ${[...ctx.scopes].sort().join(' ')}`;
    const cached = tokens.get(key);
    if (cached !== undefined && cached.token !== stale && cached.expiresAt > now()) return cached.token;
    tokens.delete(key);
    let pending = tokenRequests.get(key);
    if (pending === undefined) {
      pending = fetchToken(method, ctx);
      tokenRequests.set(key, pending);
      const clear = (): void => {
        tokenRequests.delete(key);
      };
      pending.then(clear, clear);
    }
    const fresh = await untilAborted(pending, ctx.signal);
    if (tokens.size > 1000) for (const [k, t] of tokens) if (t.expiresAt <= now()) tokens.delete(k);
    tokens.set(key, fresh);
    return fresh.token;
  }

  async function authorize(method: AuthMethod, ctx: AuthContext, stale?: string): Promise<string | undefined> {
    if (method.kind === 'none') return undefined;
    if (method.kind === 'bearer') return `Bearer ${await tokenFor(method, ctx, stale)}`;
    const key = `${ctx.origin} ${ctx.repository}`;
    if (basics.has(key) && basics.get(key) !== stale) return basics.get(key);
    const creds = await credentialsFor(ctx);
    const header = creds === undefined ? undefined : basicHeader(creds.username, creds.password);
    basics.set(key, header);
    return header;
  }

  return async (request: HttpRequest): Promise<HttpResponse> => {
    if (request.auth === undefined) return next(request);
    const origin = request.auth.origin ?? request.url.origin;
    const ctx: AuthContext = {
      origin,
      host: new URL(origin).host,
      repository: repositoryOf(request.auth.scopes),
      scopes: request.auth.scopes,
      signal: request.signal,
    };
    // An origin not met yet: a request that can be sent twice goes out without
    // credentials at once, as its own ping (a streamed upload waits for a real one).
    if (!methods.has(origin) && hasReplayableBody(request)) {
      const first = await next(request);
      const challenged = first.status === 401 || first.status === 403;
      if (!challenged) {
        if (!methods.has(origin)) methods.set(origin, Promise.resolve({ kind: 'none' }));
        return first;
      }
      await discardBody(first);
      const header = first.headers.get('www-authenticate');
      const learned = header === null ? ({ kind: 'basic' } as const) : authMethodOf(parseWwwAuthenticate(header));
      if (learned === undefined) throw new UnsupportedError(`Cannot authenticate to ${origin}: unsupported challenge scheme`);
      if (!methods.has(origin)) methods.set(origin, Promise.resolve(learned));
    }
    const method = await methodFor(origin, request.signal);
    const header = await authorize(method, ctx);
    const res = await next(withAuthorization(request, header));
    if (res.status !== 401 || !hasReplayableBody(request)) return res;

    // Refused: learn the new challenge (wider scope, expired token), refresh once, resend.
    const challenges = parseWwwAuthenticate(res.headers.get('www-authenticate') ?? '');
    const fresh = authMethodOf(challenges) ?? (method.kind === 'none' ? ({ kind: 'basic' } as const) : method);
    methods.set(origin, Promise.resolve(fresh));
    const extra = challenges.find((c) => c.scheme === 'bearer')?.params['scope']?.split(' ').filter(Boolean) ?? [];
    const scopes = [...new Set([...ctx.scopes, ...extra])];
    const stale = header?.startsWith('Bearer ') === true ? header.slice(7) : header;
    let retried: string | undefined;
    try {
      retried = await authorize(fresh, { ...ctx, scopes }, stale);
    } catch (e) {
      await discardBody(res);
      throw e;
    }
    if (retried === header) return res; // nothing new to offer: pass the refusal on
    await discardBody(res);
    debug('registry: 401 from %s %s, authenticating again', request.method, redactUrl(request.url));
    return next(withAuthorization(request, retried));
  };
}
