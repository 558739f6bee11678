/**
 * Backpressure (STYLE.md §7): a connection holds at most `maxInFlight` requests. A client
 * that does not read its replies stops the server from serving more; a device that does
 * not complete writes stops the server from reading more request bytes off the socket.
 * Without the bound both tests fail (every request reaches the device at once).
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
import { RawNbdClient } from './_test-client.ts';
import { CMD } from './protocol.ts';

const MAX_IN_FLIGHT = 16;
const REQ = 256 * 1024;
const COUNT = 200;

let dir: string;
let dev: MemoryBlockDevice;
let server: NbdServer;
let ep: NbdEndpoint;
const clients: RawNbdClient[] = [];

/**
 * Waits until `read()` is at least `atLeast` and has not changed for 300 ms (at most
 * 10 s in all), then returns it.
 */
async function settled(read: () => number, atLeast: number): Promise<number> {
  let last = read();
  let stableSince = Date.now();
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && (last < atLeast || Date.now() - stableSince < 300)) {
    await sleep(25);
    const v = read();
    if (v !== last) {
      last = v;
      stableSince = Date.now();
    }
  }
  return last;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-nbd-bp-'));
  dev = new MemoryBlockDevice(xs(COUNT * REQ, 77));
  server = createNbdServer({ device: dev, name: 'd', maxInFlight: MAX_IN_FLIGHT });
  ep = await server.listen({ path: join(dir, 'bp.sock') });
});

after(async () => {
  for (const c of clients) c.destroy();
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('a client that does not read replies gets at most maxInFlight requests served', async () => {
  const c = await RawNbdClient.connect(ep);
  clients.push(c);
  await c.open('d');
  const reads0 = dev.counts.read;
  for (let i = 0; i < COUNT; i++) c.request({ type: CMD.READ, cookie: BigInt(i), offset: i * REQ, length: REQ });
  const served = (await settled(() => dev.counts.read - reads0, MAX_IN_FLIGHT));
  // The socket may take a reply or two before it fills; nothing near COUNT.
  assert.ok(served >= MAX_IN_FLIGHT && served <= MAX_IN_FLIGHT + 4, `device served ${served} reads while the client read nothing`);
  const seen = new Set<bigint>();
  for (let i = 0; i < COUNT; i++) {
    const r = await c.readReply();
    assert.equal(r.error, 0);
    const at = Number(r.cookie) * REQ;
    assert.ok(r.data.equals(dev.bytes.subarray(at, at + REQ)), `reply ${r.cookie} has the wrong bytes`);
    seen.add(r.cookie);
  }
  assert.equal(seen.size, COUNT);
});

test('a device that does not complete writes stops the server reading the socket', async () => {
  const c = await RawNbdClient.connect(ep);
  clients.push(c);
  await c.open('d');
  let open!: () => void;
  const gate = new Promise<void>((resolve) => {
    open = resolve;
  });
  dev.hook = async (op) => {
    if (op === 'write') await gate;
  };
  try {
    const writes0 = dev.counts.write;
    const payloads: Uint8Array[] = [];
    for (let i = 0; i < COUNT; i++) {
      const p = xs(REQ, 1000 + i);
      payloads.push(p);
      c.request({ type: CMD.WRITE, cookie: BigInt(i), offset: i * REQ, length: REQ, payload: p });
    }
    const pending = await settled(() => dev.counts.write - writes0, MAX_IN_FLIGHT);
    assert.equal(pending, MAX_IN_FLIGHT, 'writes handed to the device while it completes none');
    // The server reads about maxInFlight payloads plus its 2 MiB read buffer; kernel
    // socket buffers hold a little more. The rest must still wait on the client side.
    const unsent = c.socket.writableLength;
    assert.ok(unsent > (COUNT * REQ) / 2, `only ${unsent} bytes still queued at the client`);
    open();
    for (let i = 0; i < COUNT; i++) assert.equal((await c.readReply()).error, 0);
    for (let i = 0; i < COUNT; i++) {
      assert.ok(Buffer.from(dev.bytes.subarray(i * REQ, (i + 1) * REQ)).equals(payloads[i] as Uint8Array), `write ${i} lost`);
    }
  } finally {
    dev.hook = undefined;
    open();
  }
});
