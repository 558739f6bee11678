import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { UnavailableError } from '../io/errors.ts';
import { createFetchTransport } from './fetch-transport.ts';
import { REQUEST_CHANNEL, withInstrumentation } from './instrumentation.ts';
import type { RegistryRequestEvent } from './instrumentation.ts';

let server: Server;
let base: string;
const events: RegistryRequestEvent[] = [];
const listener = (e: unknown): void => {
  events.push(e as RegistryRequestEvent);
};

before(async () => {
  server = createServer((req, res) => {
    res.writeHead(req.url === '/missing' ? 404 : 200, { 'content-length': '1000' });
    res.end(req.method === 'HEAD' ? undefined : new Uint8Array(1000));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  subscribe(REQUEST_CHANNEL, listener);
});

after(async () => {
  unsubscribe(REQUEST_CHANNEL, listener);
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

const t = withInstrumentation(createFetchTransport());

test('withInstrumentation() publishes one event per request when the body is done', async () => {
  events.length = 0;
  const res = await t({ method: 'GET', url: new URL(`${base}/blob?token=abc`), headers: { authorization: 'Bearer xyz' } });
  assert.equal(events.length, 0, 'not before the body is read');
  let n = 0;
  for await (const c of res.body ?? []) n += c.length;
  assert.equal(n, 1000);
  assert.equal(events.length, 1);
  const [e] = events;
  assert.equal(e?.method, 'GET');
  assert.equal(e?.status, 200);
  assert.equal(e?.bytes, 1000);
  assert.equal(e?.authorized, true);
  assert.equal(e?.url, `${base}/blob?token=REDACTED`);
  assert.doesNotMatch(JSON.stringify(events), /xyz|abc/);
});

test('withInstrumentation() counts cancelled bodies, HEADs and failures', async () => {
  events.length = 0;
  const res = await t({ method: 'GET', url: new URL(`${base}/missing`) });
  await res.body?.cancel();
  await t({ method: 'HEAD', url: new URL(`${base}/x`) });
  await assert.rejects(t({ method: 'GET', url: new URL('http://127.0.0.1:1/') }), UnavailableError);
  assert.deepEqual(
    events.map((e) => [e.method, e.status, e.error]),
    [
      ['GET', 404, undefined],
      ['HEAD', 200, undefined],
      ['GET', 0, events[2]?.error],
    ],
  );
  assert.equal(typeof events[2]?.error, 'string');
});
