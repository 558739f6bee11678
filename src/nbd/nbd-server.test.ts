/**
 * The NBD server against real clients (libnbd's nbdinfo and nbdcopy, over a unix socket
 * and TCP 127.0.0.1) and a raw byte-level client for what real clients never send.
 *
 * The server runs in this process, so every external tool is started asynchronously
 * (a synchronous spawn would block the event loop the server needs).
 */
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { BlockDevice } from '../io/block-device.ts';
import { DataCorruptionError, FailedPreconditionError, UnsupportedError } from '../io/errors.ts';
import { MemoryBlockDevice } from '../../test/support/memory-block-device.ts';
import { xs } from '../../test/support/generators.ts';
import { createNbdServer } from './nbd-server.ts';
import type { NbdEndpoint, NbdRequestEvent, NbdServer } from './nbd-server.ts';
import { nbdUri } from './nbd-uri.ts';
import { RawNbdClient, encodeGoData } from './_test-client.ts';
import { CLIENT_FLAG, CMD, CMD_FLAG, ERRNO, INFO, OPT, REP, REPLY_FLAG, REPLY_TYPE, TRANSMISSION_FLAG } from './protocol.ts';

const exec = promisify(execFile);
const SIZE = 8 << 20;

async function tool(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await exec(cmd, args, { timeout: 60_000, encoding: 'utf8', maxBuffer: 64 << 20 });
  return stdout;
}

const hasTools = await Promise.all(['nbdinfo', 'nbdcopy'].map((t) => exec('which', [t]).then(() => true, () => false))).then((r) => r.every(Boolean));

/** Fault injection for the 'faulty' export: a read error, or reads at one offset held at a gate. */
const fault: { readError: Error | undefined; slowOffset: number; gate: Promise<void> } = {
  readError: undefined,
  slowOffset: -1,
  gate: Promise.resolve(),
};

let dir: string;
let disk: MemoryBlockDevice;
let ro: MemoryBlockDevice;
let faulty: MemoryBlockDevice;
let server: NbdServer;
let unix: NbdEndpoint;
let tcp: NbdEndpoint;
const clients: RawNbdClient[] = [];

async function client(ep: NbdEndpoint = unix): Promise<RawNbdClient> {
  const c = await RawNbdClient.connect(ep);
  clients.push(c);
  return c;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'obd-nbd-'));
  disk = new MemoryBlockDevice(xs(SIZE, 0x2545f491));
  ro = new MemoryBlockDevice(xs(1 << 20, 7), { readOnly: true });
  faulty = new MemoryBlockDevice(xs(1 << 20, 9));
  faulty.hook = async (op, offset) => {
    if (op !== 'read') return;
    if (fault.readError !== undefined) throw fault.readError;
    if (offset === fault.slowOffset) await fault.gate;
  };
  server = createNbdServer({
    exports: new Map<string, BlockDevice | { device: BlockDevice; description: string }>([
      ['disk', { device: disk, description: 'writable test disk' }],
      ['ro', ro],
      ['faulty', faulty],
    ]),
    defaultExport: 'disk',
  });
  unix = await server.listen({ path: join(dir, 'nbd.sock') });
  tcp = await server.listen({ host: '127.0.0.1', port: 0 });
});

after(async () => {
  for (const c of clients) c.destroy();
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('real clients', { skip: hasTools ? false : 'nbdinfo/nbdcopy not installed' }, () => {
  test('nbdinfo --json shows size, flags and block sizes over a unix socket and TCP', async () => {
    for (const ep of [unix, tcp]) {
      const info = JSON.parse(await tool('nbdinfo', ['--json', nbdUri(ep, 'disk')])) as {
        protocol: string;
        structured: boolean;
        exports: Record<string, unknown>[];
      };
      assert.equal(info.protocol, 'newstyle-fixed');
      assert.equal(info.structured, true);
      const e = info.exports[0] as Record<string, unknown>;
      assert.equal(e['export-name'], 'disk');
      assert.equal(e['description'], 'writable test disk');
      assert.equal(e['export-size'], SIZE);
      assert.equal(e['is_read_only'], false);
      for (const k of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn', 'can_df']) assert.equal(e[k], true, k);
      assert.equal(e['can_fast_zero'], false);
      assert.equal(e['block_size_minimum'], 512);
      assert.equal(e['block_size_preferred'], 4096);
      assert.equal(e['block_size_maximum'], 32 << 20);
    }
    const r = JSON.parse(await tool('nbdinfo', ['--json', nbdUri(unix, 'ro')])) as { exports: Record<string, unknown>[] };
    const e = r.exports[0] as Record<string, unknown>;
    assert.equal(e['is_read_only'], true);
    assert.equal(e['can_trim'], false);
    assert.equal(e['can_zero'], false);
    assert.equal(e['export-size'], 1 << 20);
  });

  test('nbdinfo --list shows every export; the empty name opens the default export', async () => {
    const list = JSON.parse(await tool('nbdinfo', ['--list', '--json', nbdUri(unix)])) as { exports: { 'export-name': string }[] };
    assert.deepEqual(list.exports.map((e) => e['export-name']).sort(), ['disk', 'faulty', 'ro']);
    assert.equal((await tool('nbdinfo', ['--size', nbdUri(unix)])).trim(), String(SIZE));
  });

  test('nbdcopy of an export to a file gives the device bytes (unix and TCP, 4 connections)', async () => {
    for (const [i, ep] of [unix, tcp].entries()) {
      const out = join(dir, `copy-${i}.img`);
      await tool('nbdcopy', ['-C', '4', nbdUri(ep, 'disk'), out]);
      assert.ok(Buffer.from(readFileSync(out)).equals(disk.bytes), `copy over ${JSON.stringify(ep)} differs`);
    }
  });

  test('nbdcopy of a file into a writable export changes the device and flushes it', async () => {
    const src = join(dir, 'src.img');
    const data = xs(SIZE, 12345);
    writeFileSync(src, data);
    const flushes = disk.counts.flush;
    await tool('nbdcopy', ['--flush', src, nbdUri(tcp, 'disk')]);
    assert.ok(Buffer.from(disk.bytes).equals(data));
    assert.ok(disk.counts.flush > flushes, 'no flush reached the device');
  });

  test('nbdcopy into a read-only export fails and leaves it unchanged', async () => {
    const before = Buffer.from(ro.bytes);
    const src = join(dir, 'ro-src.img');
    writeFileSync(src, new Uint8Array(1 << 20).fill(1));
    await assert.rejects(tool('nbdcopy', [src, nbdUri(unix, 'ro')]));
    assert.ok(Buffer.from(ro.bytes).equals(before));
  });
});

describe('handshake', () => {
  test('the greeting offers fixed newstyle and NO_ZEROES', async () => {
    const c = await client();
    assert.equal(await c.greet(), 0b11);
  });

  test('a client without fixed newstyle is disconnected', async () => {
    const c = await client();
    await c.greet(0);
    assert.equal(await c.closedWithin(), true);
  });

  test('a client with unknown flags is disconnected', async () => {
    const c = await client();
    await c.greet(CLIENT_FLAG.FIXED_NEWSTYLE | 0x100);
    assert.equal(await c.closedWithin(), true);
  });

  test('NBD_OPT_LIST names every export, with descriptions', async () => {
    const c = await client(tcp);
    await c.greet();
    const replies = await c.option(OPT.LIST);
    assert.equal(replies.at(-1)?.type, REP.ACK);
    const servers = replies.filter((r) => r.type === REP.SERVER).map((r) => {
      const n = r.data.readUInt32BE(0);
      return [r.data.subarray(4, 4 + n).toString(), r.data.subarray(4 + n).toString()];
    });
    assert.deepEqual(servers, [['disk', 'writable test disk'], ['ro', ''], ['faulty', '']]);
    const bad = await c.option(OPT.LIST, new Uint8Array(3));
    assert.equal(bad[0]?.type, REP.ERR_INVALID);
  });

  test('NBD_OPT_INFO answers export, name, description and block size, then more options follow', async () => {
    const c = await client();
    await c.greet();
    const r = await c.option(OPT.INFO, encodeGoData('disk', [INFO.NAME, INFO.DESCRIPTION, INFO.BLOCK_SIZE]));
    assert.deepEqual(r.map((x) => x.type), [REP.INFO, REP.INFO, REP.INFO, REP.INFO, REP.ACK]);
    const byType = new Map(r.filter((x) => x.type === REP.INFO).map((x) => [x.data.readUInt16BE(0), x.data]));
    const exp = byType.get(INFO.EXPORT) as Buffer;
    assert.equal(Number(exp.readBigUInt64BE(2)), SIZE);
    assert.equal(exp.readUInt16BE(10) & TRANSMISSION_FLAG.SEND_DF, 0, 'DF advertised without structured replies');
    assert.equal(byType.get(INFO.NAME)?.subarray(2).toString(), 'disk');
    assert.equal(byType.get(INFO.DESCRIPTION)?.subarray(2).toString(), 'writable test disk');
    const bs = byType.get(INFO.BLOCK_SIZE) as Buffer;
    assert.deepEqual([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [512, 4096, 32 << 20]);
    const unknown = await c.option(OPT.GO, encodeGoData('nope'));
    assert.equal(unknown[0]?.type, REP.ERR_UNKNOWN);
    assert.match(unknown[0]?.data.toString() ?? '', /nope/);
    const malformed = await c.option(OPT.GO, Buffer.from([0, 0, 0, 9, 1]));
    assert.equal(malformed[0]?.type, REP.ERR_INVALID);
    // Still negotiating: GO on a real export works.
    const go = await c.option(OPT.GO, encodeGoData('ro'));
    assert.equal(go.at(-1)?.type, REP.ACK);
  });

  test('unknown options and STARTTLS get ERR_UNSUP; metadata contexts need structured replies', async () => {
    const c = await client();
    await c.greet();
    assert.equal((await c.option(999))[0]?.type, REP.ERR_UNSUP);
    assert.equal((await c.option(OPT.STARTTLS))[0]?.type, REP.ERR_UNSUP);
    const meta = Buffer.alloc(4 + 4 + 4 + 4 + 15);
    meta.writeUInt32BE(4, 0);
    meta.write('disk', 4);
    meta.writeUInt32BE(1, 8);
    meta.writeUInt32BE(15, 12);
    meta.write('base:allocation', 16);
    assert.equal((await c.option(OPT.SET_META_CONTEXT, meta))[0]?.type, REP.ERR_INVALID);
    assert.equal((await c.option(OPT.STRUCTURED_REPLY))[0]?.type, REP.ACK);
    assert.deepEqual((await c.option(OPT.SET_META_CONTEXT, meta)).map((r) => r.type), [REP.ACK]);
    assert.equal((await c.option(OPT.LIST_META_CONTEXT, meta.subarray(0, 10)))[0]?.type, REP.ERR_INVALID);
  });

  test('NBD_OPT_ABORT is acknowledged and the connection closes', async () => {
    const c = await client();
    await c.greet();
    assert.equal((await c.option(OPT.ABORT))[0]?.type, REP.ACK);
    assert.equal(await c.closedWithin(), true);
  });

  test('NBD_OPT_EXPORT_NAME: 10-byte reply with NO_ZEROES, 134 without; unknown name closes', async () => {
    const a = await client();
    await a.greet();
    a.sendOption(OPT.EXPORT_NAME);
    const r = await a.read(10);
    assert.equal(Number(r.readBigUInt64BE(0)), SIZE, 'the empty name is the default export');
    a.request({ type: CMD.READ, cookie: 1n, offset: 0, length: 512 });
    const reply = await a.readReply();
    assert.equal(reply.kind, 'simple');
    assert.ok(reply.data.equals(disk.bytes.subarray(0, 512)));

    const b = await client();
    await b.greet(CLIENT_FLAG.FIXED_NEWSTYLE);
    b.sendOption(OPT.EXPORT_NAME, Buffer.from('ro'));
    const full = await b.read(134);
    assert.equal(Number(full.readBigUInt64BE(0)), 1 << 20);
    assert.ok(full.subarray(10).every((x) => x === 0));

    const d = await client();
    await d.greet();
    d.sendOption(OPT.EXPORT_NAME, Buffer.from('missing'));
    assert.equal(await d.closedWithin(), true);
  });
});

describe('transmission', () => {
  test('simple replies: read, write, flush, trim and write-zeroes reach the device', async () => {
    const c = await client();
    const { flags } = await c.open('disk');
    assert.equal(flags & TRANSMISSION_FLAG.CAN_MULTI_CONN, TRANSMISSION_FLAG.CAN_MULTI_CONN);
    const data = xs(8192, 99);
    c.request({ type: CMD.WRITE, flags: CMD_FLAG.FUA, cookie: 1n, offset: 65536, length: 8192, payload: data });
    const flushes = disk.counts.flush;
    assert.deepEqual(await c.readReply(), { kind: 'simple', cookie: 1n, error: 0, flags: 0, type: -1, data: Buffer.alloc(0) });
    assert.equal(disk.counts.flush, flushes + 1, 'FUA must flush');
    assert.ok(Buffer.from(disk.bytes.subarray(65536, 65536 + 8192)).equals(data));
    c.request({ type: CMD.READ, cookie: 2n, offset: 65536, length: 8192 });
    assert.ok((await c.readReply()).data.equals(data));
    c.request({ type: CMD.FLUSH, cookie: 3n, offset: 0, length: 0 });
    assert.equal((await c.readReply()).error, 0);
    assert.equal(disk.counts.flush, flushes + 2);
    c.request({ type: CMD.TRIM, cookie: 4n, offset: 65536 + 100, length: 4096 });
    assert.equal((await c.readReply()).error, 0);
    // Only the whole block inside [65636, 69732) is discarded: [66048, 69632).
    assert.notEqual(disk.bytes[65536 + 511], 0);
    assert.ok(disk.bytes.subarray(66048, 69632).every((x) => x === 0));
    assert.equal(disk.bytes[69632], data[69632 - 65536]);
    c.request({ type: CMD.WRITE_ZEROES, cookie: 5n, offset: 65536, length: 8192 });
    assert.equal((await c.readReply()).error, 0);
    assert.ok(disk.bytes.subarray(65536, 65536 + 8192).every((x) => x === 0));
    const zeroWrites = disk.counts.write;
    c.request({ type: CMD.WRITE_ZEROES, flags: CMD_FLAG.NO_HOLE, cookie: 6n, offset: 0, length: 4096 });
    assert.equal((await c.readReply()).error, 0);
    assert.equal(disk.counts.write, zeroWrites + 1, 'NO_HOLE writes zeros instead of trimming');
    assert.ok(disk.bytes.subarray(0, 4096).every((x) => x === 0));
  });

  test('structured replies: READ is one OFFSET_DATA chunk with DONE; errors are error chunks with a message', async () => {
    const c = await client(tcp);
    const { flags } = await c.open('disk', { structured: true });
    assert.equal(flags & TRANSMISSION_FLAG.SEND_DF, TRANSMISSION_FLAG.SEND_DF);
    c.request({ type: CMD.READ, flags: CMD_FLAG.DF, cookie: 7n, offset: 1 << 20, length: 65536 });
    const r = await c.readReply();
    assert.equal(r.kind, 'chunk');
    assert.equal(r.type, REPLY_TYPE.OFFSET_DATA);
    assert.equal(r.flags, REPLY_FLAG.DONE);
    assert.equal(Number(r.data.readBigUInt64BE(0)), 1 << 20);
    assert.ok(r.data.subarray(8).equals(disk.bytes.subarray(1 << 20, (1 << 20) + 65536)));
    c.request({ type: CMD.READ, cookie: 8n, offset: SIZE - 512, length: 1024 });
    const e = await c.readReply();
    assert.equal(e.type, REPLY_TYPE.ERROR);
    assert.equal(e.flags, REPLY_FLAG.DONE);
    assert.equal(e.error, ERRNO.EINVAL);
    const len = e.data.readUInt16BE(4);
    assert.match(e.data.subarray(6, 6 + len).toString(), /ends at 8388608/);
  });

  test('invalid requests get EINVAL, ENOSPC, EOVERFLOW; the connection keeps serving', async () => {
    const c = await client();
    await c.open('disk');
    const cases: [Parameters<RawNbdClient['request']>[0], number][] = [
      [{ type: CMD.READ, cookie: 10n, offset: SIZE, length: 512 }, ERRNO.EINVAL],
      [{ type: CMD.READ, cookie: 11n, offset: 0, length: 0 }, ERRNO.EINVAL],
      [{ type: CMD.READ, cookie: 12n, offset: 0, length: (32 << 20) + 512 }, ERRNO.EOVERFLOW],
      [{ type: CMD.READ, flags: CMD_FLAG.DF, cookie: 13n, offset: 0, length: 512 }, ERRNO.EINVAL],
      [{ type: CMD.READ, flags: 0x8000, cookie: 14n, offset: 0, length: 512 }, ERRNO.EINVAL],
      [{ type: CMD.WRITE, cookie: 15n, offset: SIZE - 512, length: 1024, payload: new Uint8Array(1024) }, ERRNO.ENOSPC],
      [{ type: CMD.TRIM, cookie: 16n, offset: 2 ** 60, length: 512 }, ERRNO.ENOSPC],
      [{ type: CMD.WRITE_ZEROES, flags: CMD_FLAG.FAST_ZERO, cookie: 17n, offset: 0, length: 512 }, ERRNO.EINVAL],
      [{ type: CMD.FLUSH, cookie: 18n, offset: 4096, length: 0 }, ERRNO.EINVAL],
      [{ type: CMD.BLOCK_STATUS, cookie: 19n, offset: 0, length: 512 }, ERRNO.EINVAL],
      [{ type: CMD.CACHE, cookie: 20n, offset: 0, length: 512 }, ERRNO.EINVAL],
      [{ type: 77, cookie: 21n, offset: 0, length: 512 }, ERRNO.EINVAL],
      [{ type: CMD.WRITE, cookie: 22n, offset: 0, length: 33 << 20, payload: new Uint8Array(33 << 20) }, ERRNO.EOVERFLOW],
    ];
    for (const [req, errno] of cases) {
      c.request(req);
      const r = await c.readReply();
      assert.equal(r.cookie, req.cookie);
      assert.equal(r.error, errno, `cookie ${req.cookie}`);
      assert.equal(r.data.length, 0);
    }
    c.request({ type: CMD.READ, cookie: 30n, offset: 4096, length: 512 });
    assert.ok((await c.readReply()).data.equals(disk.bytes.subarray(4096, 4608)));
  });

  test('a read-only export rejects WRITE, TRIM and WRITE_ZEROES with EPERM', async () => {
    const before = Buffer.from(ro.bytes);
    for (const structured of [false, true]) {
      const c = await client();
      const { flags } = await c.open('ro', { structured });
      assert.equal(flags & TRANSMISSION_FLAG.READ_ONLY, TRANSMISSION_FLAG.READ_ONLY);
      c.request({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 512, payload: new Uint8Array(512).fill(5) });
      c.request({ type: CMD.TRIM, cookie: 2n, offset: 0, length: 512 });
      c.request({ type: CMD.WRITE_ZEROES, cookie: 3n, offset: 0, length: 512 });
      c.request({ type: CMD.FLUSH, cookie: 4n, offset: 0, length: 0 });
      const got = new Map<bigint, number>();
      for (let i = 0; i < 4; i++) {
        const r = await c.readReply();
        got.set(r.cookie, r.error);
      }
      assert.deepEqual([...got.entries()].sort(), [[1n, ERRNO.EPERM], [2n, ERRNO.EPERM], [3n, ERRNO.EPERM], [4n, 0]]);
    }
    assert.ok(Buffer.from(ro.bytes).equals(before));
  });

  test('unaligned reads and writes are served by read-modify-write; the device sees aligned I/O only', async () => {
    const c = await client();
    await c.open('disk', { structured: true });
    const ref = Buffer.from(disk.bytes);
    c.request({ type: CMD.READ, cookie: 1n, offset: 1000, length: 3 });
    const r = await c.readReply();
    assert.equal(r.type, REPLY_TYPE.OFFSET_DATA);
    assert.equal(Number(r.data.readBigUInt64BE(0)), 1000);
    assert.ok(r.data.subarray(8).equals(ref.subarray(1000, 1003)));
    // Many small unaligned writes into the same blocks, all in flight at once: the
    // per-export lock must keep every byte.
    const base = 3 << 20;
    for (let i = 0; i < 100; i++) {
      c.request({ type: CMD.WRITE, cookie: BigInt(100 + i), offset: base + 7 * i + 1, length: 7, payload: new Uint8Array(7).fill(i + 1) });
      ref.fill(i + 1, base + 7 * i + 1, base + 7 * i + 8);
    }
    for (let i = 0; i < 100; i++) assert.equal((await c.readReply()).error, 0);
    c.request({ type: CMD.WRITE_ZEROES, cookie: 300n, offset: base + 900, length: 2000 });
    ref.fill(0, base + 900, base + 2900);
    assert.equal((await c.readReply()).error, 0);
    assert.ok(Buffer.from(disk.bytes).equals(ref));
  });

  test('device errors map to NBD errno: corruption → EIO, unsupported → ENOTSUP, precondition → EPERM', async () => {
    const c = await client();
    await c.open('faulty', { structured: true });
    const cases: [Error, number][] = [
      [new DataCorruptionError('Cannot read block 3: CRC mismatch'), ERRNO.EIO],
      [new UnsupportedError('Cannot read: compression algorithm 9'), ERRNO.ENOTSUP],
      [new FailedPreconditionError('Cannot read: device is closed'), ERRNO.EPERM],
      [Object.assign(new Error('no space'), { code: 'ENOSPC' }), ERRNO.ENOSPC],
      [new TypeError('bug'), ERRNO.EIO],
    ];
    for (const [i, [err, errno]] of cases.entries()) {
      fault.readError = err;
      c.request({ type: CMD.READ, cookie: BigInt(i), offset: 0, length: 4096 });
      const r = await c.readReply();
      assert.equal(r.type, REPLY_TYPE.ERROR);
      assert.equal(r.error, errno, err.message);
      assert.equal(r.data.subarray(6).toString(), err.message);
    }
    fault.readError = undefined;
  });

  test('replies come in completion order: a slow read does not hold back a fast one', async () => {
    const c = await client();
    await c.open('faulty');
    let open!: () => void;
    fault.gate = new Promise((resolve) => {
      open = resolve;
    });
    fault.slowOffset = 0;
    c.request({ type: CMD.READ, cookie: 1n, offset: 0, length: 512 });
    c.request({ type: CMD.READ, cookie: 2n, offset: 4096, length: 512 });
    const first = await c.readReply();
    assert.equal(first.cookie, 2n);
    open();
    const second = await c.readReply();
    assert.equal(second.cookie, 1n);
    assert.ok(second.data.equals(faulty.bytes.subarray(0, 512)));
    fault.slowOffset = -1;
  });

  test('NBD_CMD_DISC answers every request in flight, then closes', async () => {
    const c = await client();
    await c.open('faulty');
    let open!: () => void;
    fault.gate = new Promise((resolve) => {
      open = resolve;
    });
    fault.slowOffset = 8192;
    for (let i = 0; i < 8; i++) c.request({ type: CMD.READ, cookie: BigInt(i), offset: 8192, length: 512 });
    c.request({ type: CMD.DISC, cookie: 99n, offset: 0, length: 0 });
    setTimeout(open, 50);
    const cookies: bigint[] = [];
    for (let i = 0; i < 8; i++) cookies.push((await c.readReply()).cookie);
    assert.deepEqual(cookies.sort(), [0n, 1n, 2n, 3n, 4n, 5n, 6n, 7n]);
    assert.equal(await c.closedWithin(), true);
    fault.slowOffset = -1;
  });

  test('requests are published on the obd:nbd:request diagnostics channel', async () => {
    const events: NbdRequestEvent[] = [];
    const onEvent = (m: unknown): void => void events.push(m as NbdRequestEvent);
    subscribe('obd:nbd:request', onEvent);
    try {
      const c = await client();
      await c.open('ro');
      c.request({ type: CMD.READ, cookie: 1n, offset: 512, length: 1024 });
      c.request({ type: CMD.WRITE, cookie: 2n, offset: 0, length: 512, payload: new Uint8Array(512) });
      await c.readReply();
      await c.readReply();
    } finally {
      unsubscribe('obd:nbd:request', onEvent);
    }
    const mine = events
      .filter((e) => e.export === 'ro')
      .map(({ command, offset, length, error }) => ({ command, offset, length, error }))
      .sort((a, b) => a.command.localeCompare(b.command));
    assert.deepEqual(mine, [
      { command: 'READ', offset: 512, length: 1024, error: 0 },
      { command: 'WRITE', offset: 0, length: 512, error: ERRNO.EPERM },
    ]);
  });
});

test('close() ends idle and busy connections, stops accepting, and resolves', async () => {
  const dev = new MemoryBlockDevice(1 << 20);
  const s = createNbdServer({ device: dev, name: 'x', closeTimeoutMs: 2000 });
  const ep = await s.listen({ path: join(dir, 'close.sock') });
  const handshaking = await RawNbdClient.connect(ep);
  await handshaking.greet();
  const busy = await RawNbdClient.connect(ep);
  await busy.open('x');
  busy.request({ type: CMD.READ, cookie: 1n, offset: 0, length: 512 });
  await busy.readReply();
  assert.equal(s.connections, 2);
  const t0 = Date.now();
  await s.close();
  assert.ok(Date.now() - t0 < 1500, 'close waited for the close timeout');
  assert.equal(await handshaking.closedWithin(1000), true);
  assert.equal(await busy.closedWithin(1000), true);
  assert.equal(s.connections, 0);
  await assert.rejects(RawNbdClient.connect(ep));
  await assert.rejects(s.listen({ port: 0 }), FailedPreconditionError);
  handshaking.destroy();
  busy.destroy();
});

test('close() during listen() leaves no listener behind', async () => {
  const s = createNbdServer({ device: new MemoryBlockDevice(4096), name: 'x' });
  const path = join(dir, 'race.sock');
  const listening = s.listen({ path });
  const closing = s.close();
  await assert.rejects(listening, FailedPreconditionError);
  await closing;
  await assert.rejects(RawNbdClient.connect({ path }));
});

test('createNbdServer() rejects bad options', () => {
  const dev = new MemoryBlockDevice(4096);
  assert.throws(() => createNbdServer({}), TypeError);
  assert.throws(() => createNbdServer({ device: dev, exports: new Map() }), TypeError);
  assert.throws(() => createNbdServer({ exports: new Map() }), RangeError);
  assert.throws(() => createNbdServer({ device: { device: dev, minimumBlockSize: 3 } }), RangeError);
  assert.throws(() => createNbdServer({ device: { device: dev, minimumBlockSize: 4096, preferredBlockSize: 512 } }), RangeError);
  assert.throws(() => createNbdServer({ device: dev, defaultExport: 'other' }), RangeError);
  assert.throws(() => createNbdServer({ device: dev, maxInFlight: 0 }), RangeError);
  assert.equal(nbdUri({ path: '/run/a b.sock' }, 'my disk'), 'nbd+unix:///my%20disk?socket=/run/a%20b.sock');
  assert.equal(nbdUri({ host: '::1', port: 10809 }, 'd'), 'nbd://[::1]:10809/d');
});
