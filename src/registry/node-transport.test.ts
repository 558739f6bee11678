import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { UnavailableError } from '../io/errors.ts';
import { createFetchTransport } from './fetch-transport.ts';
import { createNodeTransport } from './node-transport.ts';
import type { HttpTransport } from './transport.ts';

let server: Server;
let base: string;
let closedPort: number;

before(async () => {
  server = createServer((req, res) => {
    const hash = createHash('sha256');
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      hash.update(c);
    });
    req.on('end', () => {
      if (req.url === '/redirect') {
        res.writeHead(307, { location: '/elsewhere', 'x-multi': 'a' }).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain' }).end(`${req.method} ${n} ${hash.digest('hex')}`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise<void>((r) => probe.close(() => r()));
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

const node = createNodeTransport();
after(() => node.close());

for (const [name, transport] of [
  ['node', node.transport],
  ['fetch', createFetchTransport()],
] as [string, HttpTransport][]) {
  test(`${name} transport sends Uint8Array and streamed bodies and does not follow redirects`, async () => {
    const data = new Uint8Array(3 * 1024 * 1024).map((_, i) => i % 253);
    const digest = createHash('sha256').update(data).digest('hex');
    const text = async (body: ReadableStream<Uint8Array> | null): Promise<string> => {
      const parts: Uint8Array[] = [];
      for await (const c of body ?? []) parts.push(c);
      return new TextDecoder().decode(Buffer.concat(parts));
    };
    const a = await transport({ method: 'PUT', url: new URL(`${base}/x`), body: data });
    assert.equal(await text(a.body), `PUT ${data.length} ${digest}`);
    let off = 0;
    const stream = new ReadableStream<Uint8Array>({
      pull(c) {
        if (off >= data.length) c.close();
        else {
          c.enqueue(data.slice(off, off + 65536));
          off += 65536;
        }
      },
    });
    const b = await transport({ method: 'PATCH', url: new URL(`${base}/y`), body: stream });
    assert.equal(await text(b.body), `PATCH ${data.length} ${digest}`);
    const r = await transport({ method: 'GET', url: new URL(`${base}/redirect`) });
    assert.equal(r.status, 307);
    assert.equal(r.headers.get('location'), '/elsewhere');
    await r.body?.cancel();
    await assert.rejects(transport({ method: 'GET', url: new URL(`http://127.0.0.1:${closedPort}/`) }), (e: unknown) => e instanceof UnavailableError && /ECONNREFUSED/.test(e.message));
  });
}
