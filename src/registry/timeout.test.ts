import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { UnavailableError } from '../io/errors.ts';
import { createFetchTransport } from './fetch-transport.ts';
import { withTimeout } from './timeout.ts';

let server: Server;
let base: string;
const hanging = new Set<ServerResponse>();

before(async () => {
  server = createServer((req, res) => {
    if (req.url === '/silent') {
      hanging.add(res); // never answers
      return;
    }
    if (req.url === '/stall-body') {
      res.writeHead(200, { 'content-length': '100' });
      res.write(new Uint8Array(10));
      hanging.add(res);
      return;
    }
    res.writeHead(200, { 'content-length': String(64 * 1024) });
    res.end(new Uint8Array(64 * 1024));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  for (const res of hanging) res.destroy();
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

// Generous enough for a loaded CI machine to answer a local request in time.
const t = withTimeout(createFetchTransport(), { timeoutMs: 1000 });

test('withTimeout() fails a request without response headers with UnavailableError', async () => {
  const started = Date.now();
  await assert.rejects(t({ method: 'GET', url: new URL(`${base}/silent`) }), (e: unknown) => e instanceof UnavailableError && /no response within 1000 ms/.test(e.message));
  assert.ok(Date.now() - started < 5000);
});

test('withTimeout() fails a stalled body read with UnavailableError', async () => {
  const res = await t({ method: 'GET', url: new URL(`${base}/stall-body`) });
  assert.equal(res.status, 200);
  const reader = res.body?.getReader();
  assert.ok(reader !== undefined);
  await assert.rejects(
    (async () => {
      for (;;) if ((await reader.read()).done) break;
    })(),
    (e: unknown) => e instanceof UnavailableError && /no response data within 1000 ms/.test(e.message),
  );
});

test('withTimeout() does not count time the consumer spends away', async () => {
  const res = await t({ method: 'GET', url: new URL(`${base}/ok`) });
  await new Promise((r) => setTimeout(r, 2500));
  let n = 0;
  for await (const c of res.body ?? []) n += c.length;
  assert.equal(n, 64 * 1024);
});

test('withTimeout() rejects with the caller reason when the caller aborts', async () => {
  const ac = new AbortController();
  const reason = new Error('stop');
  setTimeout(() => ac.abort(reason), 20);
  await assert.rejects(withTimeout(createFetchTransport(), { timeoutMs: 5000 })({ method: 'GET', url: new URL(`${base}/silent`), signal: ac.signal }), (e) => e === reason);
  const pre = new AbortController();
  pre.abort(reason);
  await assert.rejects(t({ method: 'GET', url: new URL(`${base}/ok`), signal: pre.signal }), (e) => e === reason);
});

test('request.timeoutMs overrides the default', async () => {
  const started = Date.now();
  await assert.rejects(withTimeout(createFetchTransport(), { timeoutMs: 60_000 })({ method: 'GET', url: new URL(`${base}/silent`), timeoutMs: 50 }), UnavailableError);
  assert.ok(Date.now() - started < 2000);
});
