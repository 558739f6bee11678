/**
 * A timeline of the HTTP requests passing a {@link SlowLink}, for finding where
 * a cold start waits: per request its start (ms since `since`), connection, blob (first
 * 12 hex digits of the digest), range, time to the first and last response byte, bytes.
 * HTTP/1.1 without pipelining: response bytes belong to the connection's last request.
 *
 * @example
 * ```ts
 * const timeline = new RequestTimeline();
 * const link = await SlowLink.start({ upstreamPort, connectDelayMs: 10, requestDelayMs: 10, bandwidthBytesPerSecond: 0, onData: timeline.onData });
 * const t0 = performance.now();
 * // ... run something ...
 * console.log(timeline.format(t0).join('\n'));
 * ```
 */
import type { TrafficEvent } from './slow-link.ts';

interface Entry {
  connection: number;
  at: number;
  what: string;
  first: number;
  last: number;
  bytes: number;
}

const REQUEST = /^(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+)/;

/** Collects requests from traffic events; `onData` is bound, pass it as is. */
export class RequestTimeline {
  readonly #entries: Entry[] = [];
  readonly #current = new Map<number, Entry>();

  readonly onData = (e: TrafficEvent): void => {
    if (e.direction === 'up') {
      const m = REQUEST.exec(e.head ?? '');
      if (m === null) return;
      const blob = /sha256:([0-9a-f]{12})/.exec(m[2] as string)?.[1];
      const range = /\r\nrange: bytes=(\S+)/i.exec(e.head ?? '')?.[1];
      const what = blob !== undefined ? `${m[1]} blob ${blob}${range !== undefined ? ` ${range}` : ''}` : `${m[1]} ${m[2]}`;
      const entry: Entry = { connection: e.connection, at: e.at, what, first: 0, last: 0, bytes: 0 };
      this.#entries.push(entry);
      this.#current.set(e.connection, entry);
      return;
    }
    const entry = this.#current.get(e.connection);
    if (entry === undefined) return;
    if (entry.first === 0) entry.first = e.at;
    entry.last = e.at;
    entry.bytes += e.bytes;
  };

  /** One line per request started at or after `since` (a `performance.now()` value). */
  format(since: number): string[] {
    return this.#entries
      .filter((e) => e.at >= since)
      .map(
        (e) =>
          `${(e.at - since).toFixed(0).padStart(6)} ms  conn ${String(e.connection).padStart(3)}  ${e.what}  ` +
          `first byte +${(e.first === 0 ? 0 : e.first - e.at).toFixed(0)} ms, last +${(e.last === 0 ? 0 : e.last - e.at).toFixed(0)} ms, ${e.bytes} B`,
      );
  }
}
