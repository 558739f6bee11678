/**
 * The convertor's progress as terminal text (issue 5 scope 5): one line per layer with
 * its current phase (download, apply, commit, reuse, push), a bar when the total is
 * known, bytes so far / total and the phase's rate. It only formats: the CLI feeds it
 * `ConvertEvent`s and redraws the frame on a TTY (and prints nothing when standard error
 * is not a terminal; `--json` prints the events themselves).
 *
 * @example
 * ```ts
 * const view = new ProgressView();
 * view.update({ type: 'layer', platform: '', index: 0, count: 1, phase: 'download', bytes: 5 << 20, total: 10 << 20, done: false }, 1000);
 * view.render(2000, 80); // ['layer 1/1  download [##########          ]    5.0/10.0 MiB  5.0 MiB/s']
 * ```
 */
import type { ConvertEvent } from './convert-image.ts';

type LayerEvent = Extract<ConvertEvent, { type: 'layer' }>;

interface Row {
  label: string;
  phase: LayerEvent['phase'];
  bytes: number;
  total: number | undefined;
  done: boolean;
  /** When the phase started and, once done, ended (ms). */
  startMs: number;
  endMs: number | undefined;
}

const BAR = 20;

/** `12.3 MiB` style sizes. */
export function formatMiB(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

/** Per-layer progress lines from convertor events. */
export class ProgressView {
  readonly #rows = new Map<string, Row>();

  /** Takes one event (others than `layer` are ignored); `nowMs` is the time it arrived. */
  update(e: ConvertEvent, nowMs: number): void {
    if (e.type !== 'layer') return;
    const key = `${e.platform}#${e.index}`;
    let row = this.#rows.get(key);
    if (row === undefined || row.phase !== e.phase) {
      const label = `${e.platform ? `[${e.platform}] ` : ''}layer ${e.index + 1}/${e.count}`;
      row = { label, phase: e.phase, bytes: 0, total: undefined, done: false, startMs: nowMs, endMs: undefined };
      this.#rows.set(key, row);
    }
    row.bytes = e.bytes;
    row.total = e.total;
    if (e.done && !row.done) {
      row.done = true;
      row.endMs = nowMs;
    }
  }

  /** Layers not yet in their last phase or still running. */
  get active(): number {
    return [...this.#rows.values()].filter((r) => !r.done).length;
  }

  /** The lines of the current frame, each cut to `width` columns. */
  render(nowMs: number, width = 100): string[] {
    const labelWidth = Math.max(0, ...[...this.#rows.values()].map((r) => r.label.length));
    return [...this.#rows.values()].map((r) => {
      const seconds = Math.max(((r.endMs ?? nowMs) - r.startMs) / 1000, 0.001);
      const bar = r.total !== undefined && r.total > 0 ? `[${'#'.repeat(Math.round((Math.min(r.bytes, r.total) / r.total) * BAR)).padEnd(BAR)}]` : ' '.repeat(BAR + 2);
      const amount = r.total !== undefined ? `${formatMiB(r.bytes)}/${formatMiB(r.total)} MiB` : `${formatMiB(r.bytes)} MiB`;
      const tail = r.done ? `done in ${seconds.toFixed(1)} s` : `${formatMiB(r.bytes / seconds)} MiB/s`;
      const line = `${r.label.padEnd(labelWidth)}  ${r.phase.padEnd(8)} ${bar} ${amount.padStart(15)}  ${tail}`;
      return line.length > width ? line.slice(0, width) : line;
    });
  }
}
