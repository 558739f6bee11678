/**
 * The snapshotter's Prometheus exporter (`exporterConfig`, snapshotter.md §15): per-RPC
 * error counters and latency histograms in the text exposition format, served over
 * HTTP at `uriPrefix`. No client library: three metric families do not need one.
 *
 * | name | type | labels |
 * |---|---|---|
 * | `is_alive` | gauge | — (1 while serving, 0 after close; upstream never sets 1) |
 * | `grpc_error_count` | counter | `function` |
 * | `grpc_latency_seconds` | histogram, buckets 0.0001 × 2^k, k = 0…19 | `function` |
 *
 * @example
 * ```ts
 * const metrics = new SnapshotterMetrics();
 * const server = await startSnapshotterServer({ snapshotter, address, observe: metrics.observe });
 * const http = await metrics.listen({ port: 9863, uriPrefix: '/metrics' });
 * ```
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

const BUCKETS = Array.from({ length: 20 }, (_, k) => 0.0001 * 2 ** k);

interface Histogram {
  counts: number[];
  sum: number;
  count: number;
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : String(Number(n.toPrecision(15)));
}

/** Collects RPC metrics and renders them. */
export class SnapshotterMetrics {
  #alive = 0;
  readonly #errors = new Map<string, number>();
  readonly #latency = new Map<string, Histogram>();

  /** An `RpcObserver` for `startSnapshotterServer`. */
  readonly observe = (rpc: string, seconds: number, failed: boolean): void => {
    if (failed) this.#errors.set(rpc, (this.#errors.get(rpc) ?? 0) + 1);
    let h = this.#latency.get(rpc);
    if (h === undefined) {
      h = { counts: BUCKETS.map(() => 0), sum: 0, count: 0 };
      this.#latency.set(rpc, h);
    }
    for (const [i, b] of BUCKETS.entries()) if (seconds <= b) h.counts[i]!++;
    h.sum += seconds;
    h.count++;
  };

  /** The metrics in Prometheus text format 0.0.4. */
  render(): string {
    const out: string[] = ['# HELP is_alive Whether the snapshotter is serving.', '# TYPE is_alive gauge', `is_alive ${this.#alive}`];
    out.push('# HELP grpc_error_count Snapshotter RPCs that returned an error.', '# TYPE grpc_error_count counter');
    for (const [fn, n] of [...this.#errors].sort()) out.push(`grpc_error_count{function="${fn}"} ${n}`);
    out.push('# HELP grpc_latency_seconds Snapshotter RPC latency.', '# TYPE grpc_latency_seconds histogram');
    for (const [fn, h] of [...this.#latency].sort(([a], [b]) => a.localeCompare(b))) {
      for (const [i, b] of BUCKETS.entries()) out.push(`grpc_latency_seconds_bucket{function="${fn}",le="${fmt(b)}"} ${h.counts[i]}`);
      out.push(`grpc_latency_seconds_bucket{function="${fn}",le="+Inf"} ${h.count}`);
      out.push(`grpc_latency_seconds_sum{function="${fn}"} ${fmt(h.sum)}`, `grpc_latency_seconds_count{function="${fn}"} ${h.count}`);
    }
    return `${out.join('\n')}\n`;
  }

  /**
   * Serves the metrics on `port` (all interfaces, as upstream; `host` narrows it) at
   * `uriPrefix`. `close()` sets `is_alive` to 0 and stops the server.
   */
  async listen(options: { port: number; uriPrefix: string; host?: string }): Promise<{ port: number; close(): Promise<void> }> {
    const server: Server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== options.uriPrefix) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(this.render());
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(options.port, options.host, () => resolve());
    });
    this.#alive = 1;
    return {
      port: (server.address() as AddressInfo).port,
      close: async () => {
        this.#alive = 0;
        server.closeAllConnections();
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
    };
  }
}
