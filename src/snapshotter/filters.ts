/**
 * containerd's filter language, as `ctr snapshots ls` and the List RPC send it:
 *
 * ```
 * filter    := selector ("," selector)*        all selectors must match
 * selector  := fieldpath [operator value]      no operator: the field is present
 * fieldpath := field ("." field)*
 * field     := quoted | [A-Za-z0-9_]+
 * operator  := "==" | "!=" | "~="              "~=" is a regular expression match
 * value     := quoted | [^\s,]+
 * quoted    := "…" or /…/ with Go escapes (\" \\ \n \t \xHH \uHHHH …)
 * ```
 *
 * A list of filters matches when any of them does; an empty list or an empty filter
 * matches everything. Snapshot fields: `kind` (`active`, `view`, `committed`), `name`,
 * `parent`, `labels.<key>` (the rest of the path joined with `.`).
 *
 * @example
 * ```ts
 * const match = parseFilters(['kind==active,labels."containerd.io/gc.root"']);
 * match(info); // true for active snapshots carrying the gc.root label
 * ```
 */
import { InvalidArgumentError } from '../io/errors.ts';
import type { Info } from './snapshotter.ts';

type Operator = 'present' | '==' | '!=' | '~=';

interface Selector {
  fieldpath: string[];
  operator: Operator;
  value: string;
  re?: RegExp;
}

/** Predicate over snapshot infos. */
export type InfoMatcher = (info: Info) => boolean;

const ESCAPES: Record<string, string> = { a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v', '\\': '\\', '"': '"', '/': '/', "'": "'" };

class Parser {
  readonly #src: string;
  #pos = 0;

  constructor(src: string) {
    this.#src = src;
  }

  #fail(why: string): never {
    throw new InvalidArgumentError(`Cannot parse filter ${JSON.stringify(this.#src)}: ${why} at offset ${this.#pos}`);
  }

  #peek(): string {
    return this.#src[this.#pos] ?? '';
  }

  #skipSpace(): void {
    while (/\s/.test(this.#peek()) && this.#pos < this.#src.length) this.#pos++;
  }

  #quoted(): string {
    const quote = this.#peek();
    this.#pos++;
    let out = '';
    for (;;) {
      const c = this.#src[this.#pos++];
      if (c === undefined) this.#fail(`unterminated ${quote}-quoted string`);
      if (c === quote) return out;
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = this.#src[this.#pos++] ?? '';
      if (e in ESCAPES) out += ESCAPES[e];
      else if (e === 'x' || e === 'u' || e === 'U') {
        const n = e === 'x' ? 2 : e === 'u' ? 4 : 8;
        const hex = this.#src.slice(this.#pos, this.#pos + n);
        if (!new RegExp(`^[0-9a-fA-F]{${n}}$`).test(hex)) this.#fail(`invalid \\${e} escape`);
        this.#pos += n;
        out += String.fromCodePoint(parseInt(hex, 16));
      } else if (/[0-7]/.test(e)) {
        const oct = e + this.#src.slice(this.#pos, this.#pos + 2);
        if (!/^[0-7]{3}$/.test(oct)) this.#fail('invalid octal escape');
        this.#pos += 2;
        out += String.fromCharCode(parseInt(oct, 8));
      } else if (quote === '/') {
        // In /regexp/ values other escapes belong to the regular expression.
        out += `\\${e}`;
      } else this.#fail(`invalid escape \\${e}`);
    }
  }

  #field(): string {
    const c = this.#peek();
    if (c === '"' || c === '/') return this.#quoted();
    const m = /^[A-Za-z0-9_]+/.exec(this.#src.slice(this.#pos));
    if (m === null) this.#fail(c === '' ? 'expected a field name' : `unexpected ${JSON.stringify(c)}`);
    this.#pos += m[0].length;
    return m[0];
  }

  #selector(): Selector {
    this.#skipSpace();
    const fieldpath = [this.#field()];
    while (this.#peek() === '.') {
      this.#pos++;
      fieldpath.push(this.#field());
    }
    this.#skipSpace();
    const op = this.#src.slice(this.#pos, this.#pos + 2);
    if (op !== '==' && op !== '!=' && op !== '~=') {
      if (this.#peek() !== ',' && this.#peek() !== '') this.#fail(`expected an operator (==, !=, ~=), got ${JSON.stringify(this.#peek())}`);
      return { fieldpath, operator: 'present', value: '' };
    }
    this.#pos += 2;
    this.#skipSpace();
    let value: string;
    const c = this.#peek();
    if (c === '"' || c === '/') value = this.#quoted();
    else {
      const m = /^[^\s,]+/.exec(this.#src.slice(this.#pos));
      if (m === null) this.#fail('expected a value');
      value = m[0];
      this.#pos += value.length;
    }
    const sel: Selector = { fieldpath, operator: op, value };
    if (op === '~=') {
      try {
        sel.re = new RegExp(value);
      } catch (e) {
        this.#fail(`invalid regular expression ${JSON.stringify(value)} (${(e as Error).message})`);
      }
    }
    return sel;
  }

  parse(): Selector[] {
    this.#skipSpace();
    if (this.#pos >= this.#src.length) return [];
    const out = [this.#selector()];
    for (;;) {
      this.#skipSpace();
      if (this.#pos >= this.#src.length) return out;
      if (this.#peek() !== ',') this.#fail(`expected "," or the end, got ${JSON.stringify(this.#peek())}`);
      this.#pos++;
      out.push(this.#selector());
    }
  }
}

/** containerd's `adaptSnapshot`: the value of a field path, or undefined when absent. */
function field(info: Info, path: string[]): string | undefined {
  switch (path[0]) {
    case 'kind':
      return info.kind;
    case 'name':
      return info.name;
    case 'parent':
      return info.parent;
    case 'labels':
      return path.length > 1 ? info.labels[path.slice(1).join('.')] : undefined;
    default:
      return undefined;
  }
}

function matches(sel: Selector, info: Info): boolean {
  const v = field(info, sel.fieldpath);
  switch (sel.operator) {
    case 'present':
      return v !== undefined;
    case '==':
      return v !== undefined && v === sel.value;
    case '!=':
      return (v ?? '') !== sel.value;
    case '~=':
      return sel.re!.test(v ?? '');
  }
}

/** Parses filters (OR of ANDs); InvalidArgumentError on a syntax error. */
export function parseFilters(filters: readonly string[] = []): InfoMatcher {
  const parsed = filters.map((f) => new Parser(f).parse());
  if (parsed.length === 0 || parsed.some((p) => p.length === 0)) return () => true;
  return (info) => parsed.some((all) => all.every((s) => matches(s, info)));
}
