/**
 * Hostile and broken clients: garbage at every stage of the protocol, truncated
 * messages, oversized announcements, random requests. The server must answer with an
 * error reply or close that one connection, never crash, never hang, and keep serving
 * everyone else.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { MemoryBlockDevice } from '../../test/support/memory-block-device.ts';
import { xs } from '../../test/support/generators.ts';
import { createNbdServer } from './nbd-server.ts';
import type { NbdEndpoint, NbdServer } from './nbd-server.ts';
import { RawNbdClient, encodeGoData } from './_test-client.ts';
import { CLIENT_FLAG, CMD, ERRNO, MAGIC, OPT, REP, REPLY_FLAG, encodeRequestHeader } from './protocol.ts';

const SIZE = 1 << 20;
let dir: string;
let dev: MemoryBlockDevice;
let server: NbdServer;
let unix: NbdEndpoint;
let tcp: NbdEndpoint;
const clients: RawNbdClient[] = [];

async function client(ep: NbdEndpoint = unix): Promise<RawNbdClient> {
  const c = await RawNbdClient.connect(ep, 5000);
  clients.push(c);
  return c;
}

/** xorshift32: deterministic pseudo-random numbers for reproducible fuzzing. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function randomBytes(next: () => number, n: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = next() & 0xff;
  return b;
}

/** A fresh connection reads correct bytes: the server is alive and well. */
async function assertServing(): Promise<void> {
  const c = await client(tcp);
  await c.open('d');
  c.request({ type: CMD.READ, cookie: 42n, offset: 4096, length: 4096 });
  const r = await c.readReply();
  assert.equal(r.error, 0);
  assert.ok(r.data.equals(dev.bytes.subarray(4096, 8192)));
  c.destroy();
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-nbd-fuzz-'));
  dev = new MemoryBlockDevice(xs(SIZE, 3));
  server = createNbdServer({ device: dev, name: 'd', handshakeTimeoutMs: 3000, closeTimeoutMs: 1000 });
  unix = await server.listen({ path: join(dir, 'fuzz.sock') });
  tcp = await server.listen({ port: 0 });
});

after(async () => {
  for (const c of clients) c.destroy();
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('garbage during the handshake closes that connection only', async () => {
  const cases: Array<(c: RawNbdClient) => Promise<void>> = [
    // Junk instead of client flags.
    async (c) => {
      await c.read(18);
      c.send(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
    },
    // An option with the wrong magic.
    async (c) => {
      await c.greet();
      c.send(Buffer.from('NOTAMAGIC-OPTION'));
    },
    // An option announcing 4 GiB of data, then the client goes away.
    async (c) => {
      await c.greet();
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(MAGIC.IHAVEOPT, 0);
      h.writeUInt32BE(OPT.GO, 8);
      h.writeUInt32BE(0xfffffff0, 12);
      c.send(h);
      c.send(Buffer.alloc(1000));
      c.socket.end();
    },
    // Truncated option data.
    async (c) => {
      await c.greet();
      const h = Buffer.alloc(16);
      h.writeBigUInt64BE(MAGIC.IHAVEOPT, 0);
      h.writeUInt32BE(OPT.GO, 8);
      h.writeUInt32BE(100, 12);
      c.send(Buffer.concat([h, Buffer.alloc(10)]));
      c.socket.end();
    },
    // Half a greeting answer.
    async (c) => {
      await c.read(18);
      c.send(Buffer.from([0, 0]));
      c.socket.end();
    },
  ];
  for (const [i, run] of cases.entries()) {
    const c = await client();
    await run(c);
    assert.equal(await c.closedWithin(4000), true, `case ${i}: server kept the connection`);
  }
  await assertServing();
});

test('an option with too much data is skipped with ERR_TOO_BIG; negotiation goes on', async () => {
  const c = await client();
  await c.greet();
  const r = await c.option(OPT.INFO, Buffer.alloc(70_000));
  assert.equal(r[0]?.type, REP.ERR_TOO_BIG);
  const go = await c.option(OPT.GO, encodeGoData('d'));
  assert.equal(go.at(-1)?.type, REP.ACK);
});

test('a client silent during the handshake is dropped after the handshake timeout', async () => {
  const c = await client();
  await c.read(18);
  assert.equal(await c.closedWithin(6000), true);
});

test('broken requests in transmission: bad magic and truncation close; the server keeps serving', async () => {
  const cases: Array<(c: RawNbdClient) => void> = [
    (c) => c.send(randomBytes(rng(1), 28)),
    (c) => {
      c.send(encodeRequestHeader({ flags: 0, type: CMD.READ, cookie: 1n, offset: 0, length: 512 }).subarray(0, 10));
      c.socket.end();
    },
    (c) => {
      c.send(encodeRequestHeader({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: 4096 }));
      c.send(Buffer.alloc(100));
      c.socket.end();
    },
    // A write announcing 4 GiB: the server skips what arrives, then sees the end.
    (c) => {
      c.send(encodeRequestHeader({ flags: 0, type: CMD.WRITE, cookie: 1n, offset: 0, length: 0xffffffff }));
      c.send(Buffer.alloc(1 << 20));
      c.socket.end();
    },
  ];
  for (const [i, run] of cases.entries()) {
    const c = await client();
    await c.open('d', { structured: i % 2 === 0 });
    run(c);
    assert.equal(await c.closedWithin(4000), true, `case ${i}: server kept the connection`);
  }
  await assertServing();
});

test('random bytes after a handshake never crash the server', async () => {
  const next = rng(0xc0ffee);
  for (let i = 0; i < 40; i++) {
    const c = await client(i % 2 === 0 ? unix : tcp);
    if (i % 3 !== 0) await c.open('d', { structured: i % 2 === 0 });
    else await c.greet(CLIENT_FLAG.FIXED_NEWSTYLE | CLIENT_FLAG.NO_ZEROES);
    // Start with a valid request magic half the time so the bytes reach the dispatcher.
    const junk = randomBytes(next, 28 + (next() % 4096));
    if (i % 2 === 0) junk.writeUInt32BE(MAGIC.REQUEST, 0);
    c.send(junk);
    c.socket.end();
    assert.equal(await c.closedWithin(4000), true, `connection ${i} was not closed`);
  }
  await assertServing();
});

test('random well-framed requests each get exactly one reply with an allowed error', async () => {
  const allowed = new Set<number>([0, ERRNO.EINVAL, ERRNO.ENOSPC, ERRNO.EOVERFLOW]);
  const next = rng(0x5eed);
  const offsets = (): number => {
    switch (next() % 6) {
      case 0:
        return 0;
      case 1:
        return (next() % (SIZE / 512)) * 512;
      case 2:
        return next() % SIZE;
      case 3:
        return SIZE - (next() % 2048);
      case 4:
        return SIZE;
      default:
        return 2 ** 60 + (next() % 1000);
    }
  };
  const errors = new Set<number>();
  for (const structured of [false, true]) {
    const c = await client();
    await c.open('d', { structured });
    const sent = new Set<bigint>();
    for (let i = 0; i < 300; i++) {
      let type = next() % 10;
      if (type === CMD.DISC) type = CMD.FLUSH;
      const flags = next() % 4 === 0 ? next() & 0xffff : next() % 8;
      const cookie = BigInt(i) | (BigInt(next()) << 32n);
      const length = type === CMD.WRITE ? next() % 70_000 : next() % 3 === 0 ? next() : next() % 70_000;
      const payload = type === CMD.WRITE ? randomBytes(next, length) : undefined;
      const offset = type === CMD.FLUSH && next() % 2 === 0 ? 0 : offsets();
      c.request(payload === undefined ? { type, flags, cookie, offset, length } : { type, flags, cookie, offset, length, payload });
      sent.add(cookie);
    }
    for (let i = 0; i < 300; i++) {
      const r = await c.readReply();
      assert.ok(sent.delete(r.cookie), `reply for unknown or repeated cookie ${r.cookie}`);
      assert.ok(allowed.has(r.error), `unexpected errno ${r.error}`);
      errors.add(r.error);
      if (r.kind === 'chunk') assert.equal(r.flags & REPLY_FLAG.DONE, REPLY_FLAG.DONE);
    }
    assert.equal(sent.size, 0);
    // Nothing more arrives: exactly one reply per request.
    c.request({ type: CMD.DISC, cookie: 0n, offset: 0, length: 0 });
    assert.equal(await c.closedWithin(4000), true);
  }
  // The mix reaches success and every validation path.
  assert.deepEqual([...errors].sort((a, b) => a - b), [...allowed].sort((a, b) => a - b));
  await assertServing();
  await sleep(50);
  for (const c of clients) c.destroy();
  const deadline = Date.now() + 3000;
  while (server.connections > 0 && Date.now() < deadline) await sleep(20);
  assert.equal(server.connections, 0, 'connections left open');
});
