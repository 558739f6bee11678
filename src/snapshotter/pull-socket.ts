/**
 * The daemon's local pull endpoint (an overlaybd-ts extension): `obd rpull` hands its
 * arguments to the running snapshotter daemon over a unix socket (mode 0600, JSON over
 * HTTP) and prints what the daemon's pull printed. The daemon runs the same pull code
 * as the command, with its registry and gRPC clients already loaded and its
 * connections open; a fresh `obd rpull` process spent 0.5–0.6 s loading them and
 * connecting, most of a warm pull (bench/cold-start). A client that finds no daemon
 * listening (no socket, connection refused, no permission) pulls in its own process.
 *
 * Protocol: `POST /v1/rpull` with `{"argv": [...]}`; 200 with `{"out": "..."}`, or 4xx/5xx
 * with `{"code": "ERR_…", "message": "..."}`, rethrown by the client as the same error
 * class.
 *
 * @example
 * ```ts
 * const server = await servePullSocket('/run/overlaybd-snapshotter/rpull.sock', async (argv) => runPull(argv));
 * const out = await callPullSocket('/run/overlaybd-snapshotter/rpull.sock', ['registry/app:obd']);
 * // out === undefined: no daemon there, pull in this process
 * ```
 */
import { createServer, request } from 'node:http';
import { connect } from 'node:net';
import { chmod, lstat, unlink } from 'node:fs/promises';
import { debuglog } from 'node:util';
import {
  AlreadyExistsError,
  errorClassOf,
  FailedPreconditionError,
  InvalidArgumentError,
  UnavailableError,
} from '../io/errors.ts';

const log = debuglog('obd');

/** File name of the pull socket, beside the snapshotter's gRPC socket. */
export const PULL_SOCKET_NAME = 'rpull.sock';
/** Largest request or answer body. */
const MAX_BODY = 1 << 20;


/** Runs one pull for the given `obd rpull` arguments; resolves with what it prints. */
export type PullHandler = (argv: string[]) => Promise<string>;

/** A listening pull socket. */
export interface PullSocket {
  readonly path: string;
  close(): Promise<void>;
}

async function readBody(stream: NodeJS.ReadableStream, what: string): Promise<string> {
  let text = '';
  for await (const chunk of stream) {
    text += String(chunk);
    if (text.length > MAX_BODY) throw new InvalidArgumentError(`Invalid ${what}: more than ${MAX_BODY} bytes`);
  }
  return text;
}

/** Listens on `path` (a stale socket there is replaced; any other file is an error). */
export async function servePullSocket(path: string, handle: PullHandler): Promise<PullSocket> {
  const st = await lstat(path).catch(() => undefined);
  if (st !== undefined) {
    if (!st.isSocket()) throw new AlreadyExistsError(`Cannot listen on ${path}: a file that is not a socket exists there`);
    await unlink(path);
  }
  const server = createServer((req, res) => {
    const answer = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    void (async () => {
      if (req.method !== 'POST' || req.url !== '/v1/rpull') return answer(404, { code: 'ERR_NOT_FOUND', message: `No ${req.method} ${req.url} here: POST /v1/rpull` });
      let argv: unknown;
      try {
        argv = (JSON.parse(await readBody(req, 'pull request')) as { argv?: unknown }).argv;
      } catch (e) {
        return answer(400, { code: 'ERR_INVALID_ARGUMENT', message: `Invalid pull request: ${(e as Error).message}` });
      }
      if (!Array.isArray(argv) || argv.some((a) => typeof a !== 'string')) {
        return answer(400, { code: 'ERR_INVALID_ARGUMENT', message: 'Invalid pull request: argv must be an array of strings' });
      }
      try {
        log('snapshotter: rpull %s', (argv as string[]).join(' '));
        answer(200, { out: await handle(argv as string[]) });
      } catch (e) {
        const err = e as { code?: unknown; message?: unknown };
        const code = errorClassOf(err.code) !== undefined ? (err.code as string) : 'ERR_FAILED_PRECONDITION';
        log('snapshotter: rpull %s failed: %s', (argv as string[]).join(' '), String(err.message ?? e));
        answer(code === 'ERR_INVALID_ARGUMENT' ? 400 : 500, { code, message: typeof err.message === 'string' ? err.message : String(e) });
      }
    })();
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  try {
    await chmod(path, 0o600);
  } catch (e) {
    server.close();
    throw e;
  }
  let closing: Promise<void> | undefined;
  return {
    path,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }).then(() => unlink(path).catch(() => undefined));
      return closing;
    },
  };
}

/**
 * Asks the daemon listening on `path` to pull with `argv`; resolves with what the pull
 * printed, or undefined when no daemon answers there (no socket, refused, no permission).
 * A pull that failed in the daemon rejects with its error class and message.
 */
export async function callPullSocket(path: string, argv: string[]): Promise<string | undefined> {
  const body = JSON.stringify({ argv });
  let status: number;
  let text: string;
  try {
    ({ status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      // Its own connection and no agent: an agent's first request compiles Node's IPv6
      // address pattern (for a TLS server name), ~15 ms of a client's start-up.
      const req = request({ createConnection: () => connect(path), method: 'POST', path: '/v1/rpull', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
        readBody(res, 'pull answer').then((t) => resolve({ status: res.statusCode ?? 0, text: t }), reject);
      });
      req.once('error', reject);
      req.end(body);
    }));
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EACCES' || code === 'ENOTSOCK') return undefined;
    throw new UnavailableError(`Cannot pull through the snapshotter daemon at ${path}: ${(e as Error).message}`, { cause: e });
  }
  let doc: { out?: unknown; code?: unknown; message?: unknown };
  try {
    doc = JSON.parse(text) as typeof doc;
  } catch {
    throw new UnavailableError(`Cannot pull through the snapshotter daemon at ${path}: its answer (HTTP ${status}) is not JSON`);
  }
  if (status === 200 && typeof doc.out === 'string') return doc.out;
  const Cls = errorClassOf(doc.code) ?? FailedPreconditionError;
  throw new Cls(typeof doc.message === 'string' ? doc.message : `the snapshotter daemon answered HTTP ${status}`);
}
