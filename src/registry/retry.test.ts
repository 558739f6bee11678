import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NotFoundError, UnavailableError } from '../io/errors.ts';
import { backoffDelay, withRetry } from './retry.ts';
import type { HttpRequest, HttpResponse, HttpTransport } from './transport.ts';

const url = new URL('http://127.0.0.1:9/v2/');

/** A scripted in-process transport: answers statuses or throws errors in order. */
function scripted(script: (number | Error)[]): { transport: HttpTransport; calls: HttpRequest[]; cancelled: number } {
  const state = { calls: [] as HttpRequest[], cancelled: 0 };
  const transport: HttpTransport = async (req) => {
    state.calls.push(req);
    const step = script[Math.min(state.calls.length - 1, script.length - 1)] as number | Error;
    if (step instanceof Error) throw step;
    const body = new ReadableStream<Uint8Array>({
      pull(c) {
        c.enqueue(new Uint8Array(4));
        c.close();
      },
      cancel() {
        state.cancelled++;
      },
    });
    const res: HttpResponse = { status: step, headers: new Headers(step === 429 ? { 'retry-after': '0' } : {}), url: req.url, body };
    return res;
  };
  return Object.assign(state, { transport });
}

const fast = { baseDelayMs: 1, maxDelayMs: 2 };

test('withRetry() retries 503 and 429 and cancels the discarded bodies', async () => {
  const s = scripted([503, 429, 200]);
  const res = await withRetry(s.transport, fast)({ method: 'GET', url });
  assert.equal(res.status, 200);
  assert.equal(s.calls.length, 3);
  assert.equal(s.cancelled, 2);
});

test('withRetry() gives up after the attempt bound and passes the last answer on', async () => {
  const s = scripted([502]);
  const res = await withRetry(s.transport, { ...fast, attempts: 3 })({ method: 'HEAD', url });
  assert.equal(res.status, 502);
  assert.equal(s.calls.length, 3);
});

test('withRetry() retries temporary errors only', async () => {
  const s = scripted([new UnavailableError('reset'), 200]);
  assert.equal((await withRetry(s.transport, fast)({ method: 'GET', url })).status, 200);
  const nf = scripted([new NotFoundError('gone'), 200]);
  await assert.rejects(withRetry(nf.transport, fast)({ method: 'GET', url }), NotFoundError);
  assert.equal(nf.calls.length, 1);
  const always = scripted([new UnavailableError('down')]);
  await assert.rejects(withRetry(always.transport, { ...fast, attempts: 2 })({ method: 'GET', url }), UnavailableError);
  assert.equal(always.calls.length, 2);
});

test('withRetry() leaves non-idempotent requests and stream bodies alone', async () => {
  for (const req of [
    { method: 'POST', url },
    { method: 'PATCH', url, body: new Uint8Array(1) },
    { method: 'PUT', url, body: new ReadableStream<Uint8Array>() },
  ] as HttpRequest[]) {
    const s = scripted([503, 200]);
    assert.equal((await withRetry(s.transport, fast)(req)).status, 503);
    assert.equal(s.calls.length, 1);
  }
  const s = scripted([503, 200]);
  assert.equal((await withRetry(s.transport, fast)({ method: 'POST', url, idempotent: true })).status, 200);
});

test('withRetry() stops when the time budget would be exceeded', async () => {
  const s = scripted([503]);
  const started = Date.now();
  const res = await withRetry(s.transport, { attempts: 100, baseDelayMs: 50, maxDelayMs: 50, budgetMs: 120, random: () => 0.99 })({ method: 'GET', url });
  assert.equal(res.status, 503);
  assert.ok(s.calls.length >= 2 && s.calls.length <= 4, `calls ${s.calls.length}`);
  assert.ok(Date.now() - started < 1000);
});

test('withRetry() aborts a backoff wait with the caller reason', async () => {
  const s = scripted([503]);
  const ac = new AbortController();
  const reason = new Error('caller gave up');
  setTimeout(() => ac.abort(reason), 30);
  const started = Date.now();
  await assert.rejects(withRetry(s.transport, { baseDelayMs: 10_000, maxDelayMs: 10_000, random: () => 0.99 })({ method: 'GET', url, signal: ac.signal }), (e) => e === reason);
  assert.ok(Date.now() - started < 2000);
});

test('backoffDelay() is full jitter under an exponential, capped ceiling', () => {
  assert.equal(backoffDelay(1, { baseDelayMs: 100, random: () => 0.999 }), 99);
  assert.equal(backoffDelay(3, { baseDelayMs: 100, random: () => 0.5 }), 200);
  assert.equal(backoffDelay(20, { baseDelayMs: 100, maxDelayMs: 4000, random: () => 0.999 }), 3996);
  assert.equal(backoffDelay(5, { random: () => 0 }), 0);
});
