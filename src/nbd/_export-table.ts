/**
 * The exports a server offers: name → device, description, block-size constraints, and
 * the lock that serialises read-modify-write cycles on that device across connections.
 */
import type { BlockDevice } from '../io/block-device.ts';
import type { BlockSizes } from './protocol.ts';

/** One export's settings as given to `createNbdServer`. */
export interface NbdExport {
  device: BlockDevice;
  /** Shown by `nbdinfo` (NBD_INFO_DESCRIPTION and NBD_OPT_LIST details). */
  description?: string;
  /**
   * Alignment the device needs for offsets and lengths (power of two, 1..65536; default
   * 512, what LSMT needs). Advertised as the minimum block size; requests from clients
   * that ignore it are served by read-modify-write.
   */
  minimumBlockSize?: number;
  /** Advertised preferred block size (power of two ≥ minimum; default 4096). */
  preferredBlockSize?: number;
}

/** A serial queue: `run(fn)` waits for every earlier `run` to settle. */
export class SerialLock {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn, fn);
    this.#tail = result.catch(() => undefined);
    return result;
  }
}

export interface ServedExport {
  readonly name: string;
  readonly device: BlockDevice;
  readonly description: string;
  readonly blockSizes: BlockSizes;
  /** Serialises read-modify-write of partial blocks on this device. */
  readonly rmwLock: SerialLock;
}

function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

export interface ExportTableOptions {
  maxPayload: number;
  /** The export served for the empty name; defaults to the only export when there is one. */
  defaultExport?: string;
}

export class ExportTable {
  readonly #byName = new Map<string, ServedExport>();
  readonly #defaultName: string | undefined;

  constructor(exports: ReadonlyMap<string, BlockDevice | NbdExport>, options: ExportTableOptions) {
    for (const [name, value] of exports) {
      const spec: NbdExport = 'device' in value ? value : { device: value };
      const minimum = spec.minimumBlockSize ?? 512;
      const preferred = spec.preferredBlockSize ?? Math.max(4096, minimum);
      if (!isPowerOfTwo(minimum) || minimum > 65536) {
        throw new RangeError(`Cannot serve export '${name}': minimum block size ${minimum} is not a power of two up to 65536`);
      }
      if (!isPowerOfTwo(preferred) || preferred < minimum) {
        throw new RangeError(`Cannot serve export '${name}': preferred block size ${preferred} is not a power of two ≥ ${minimum}`);
      }
      if (new TextEncoder().encode(name).length > 4096) {
        throw new RangeError(`Cannot serve export '${name.slice(0, 32)}…': name is longer than 4096 bytes`);
      }
      const maximum = options.maxPayload - (options.maxPayload % minimum);
      if (maximum < preferred) {
        throw new RangeError(`Cannot serve export '${name}': maximum payload ${options.maxPayload} is below the preferred block size ${preferred}`);
      }
      this.#byName.set(name, {
        name,
        device: spec.device,
        description: spec.description ?? '',
        blockSizes: { minimum, preferred, maximum },
        rmwLock: new SerialLock(),
      });
    }
    if (this.#byName.size === 0) throw new RangeError('Cannot create NBD server: no exports given');
    const def = options.defaultExport ?? (this.#byName.size === 1 ? [...this.#byName.keys()][0] : undefined);
    if (def !== undefined && !this.#byName.has(def)) {
      throw new RangeError(`Cannot create NBD server: default export '${def}' is not among the exports`);
    }
    this.#defaultName = def;
  }

  /** The export for `name`; the empty name selects the default export. */
  lookup(name: string): ServedExport | undefined {
    const hit = this.#byName.get(name);
    if (hit !== undefined || name !== '' || this.#defaultName === undefined) return hit;
    return this.#byName.get(this.#defaultName);
  }

  list(): ServedExport[] {
    return [...this.#byName.values()];
  }
}
