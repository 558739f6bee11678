/**
 * `WWW-Authenticate` parsing (RFC 7235): a header holds one or more challenges, each an
 * auth scheme followed by a token68 or by comma-separated `name=value` parameters whose
 * values may be quoted strings containing commas, `=` and backslash escapes. Several
 * challenges may share one header (`Bearer realm="…", Basic realm="…"`), which is also how
 * `fetch` joins repeated headers.
 *
 * @example
 * ```ts
 * parseWwwAuthenticate('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:a/b:pull,push"');
 * // [{ scheme: 'bearer', params: { realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:a/b:pull,push' } }]
 * ```
 */

/** One challenge: lower-cased scheme, lower-cased parameter names. */
export interface Challenge {
  readonly scheme: string;
  readonly params: Readonly<Record<string, string>>;
  /** The token68 form (`Negotiate abc==`), if used. */
  readonly token68?: string;
}

const TCHAR = /[!#$%&'*+.^_`|~0-9A-Za-z-]/;

class Cursor {
  pos = 0;
  constructor(readonly text: string) {}
  get done(): boolean {
    return this.pos >= this.text.length;
  }
  peek(): string {
    return this.text[this.pos] ?? '';
  }
  skipSpace(): void {
    while (this.peek() === ' ' || this.peek() === '\t') this.pos++;
  }
  skipSeparators(): void {
    while (this.peek() === ' ' || this.peek() === '\t' || this.peek() === ',') this.pos++;
  }
  token(): string {
    const start = this.pos;
    while (!this.done && TCHAR.test(this.peek())) this.pos++;
    return this.text.slice(start, this.pos);
  }
  quoted(): string {
    this.pos++; // opening quote
    let out = '';
    while (!this.done) {
      const c = this.peek();
      this.pos++;
      if (c === '"') return out;
      if (c === '\\' && !this.done) {
        out += this.peek();
        this.pos++;
      } else {
        out += c;
      }
    }
    return out; // unterminated: take the rest
  }
  /** An unquoted value: lenient, up to the next comma or space (URLs with `:` and `/` pass). */
  bare(): string {
    const start = this.pos;
    while (!this.done && this.peek() !== ',' && this.peek() !== ' ' && this.peek() !== '\t') this.pos++;
    return this.text.slice(start, this.pos);
  }
}

/**
 * True when the cursor stands at `name = value` (a parameter), not at a new scheme and
 * not at a token68 such as `abc123==` (a run of `=` followed by the end or a comma).
 */
function atParam(c: Cursor): boolean {
  const save = c.pos;
  const name = c.token();
  c.skipSpace();
  let isParam = name !== '' && c.peek() === '=';
  if (isParam) {
    while (c.peek() === '=') c.pos++;
    c.skipSpace();
    if (c.done || c.peek() === ',') isParam = false;
  }
  c.pos = save;
  return isParam;
}

/** Parses a `WWW-Authenticate` value into its challenges; unparseable parts are skipped. */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const c = new Cursor(header);
  const out: Challenge[] = [];
  while (!c.done) {
    c.skipSeparators();
    const scheme = c.token();
    if (scheme === '') {
      c.pos++; // junk character
      continue;
    }
    c.skipSpace();
    const params: Record<string, string> = {};
    let token68: string | undefined;
    if (!atParam(c) && c.peek() !== ',' && !c.done) {
      const start = c.pos;
      while (!c.done && c.peek() !== ',' && c.peek() !== ' ') c.pos++;
      const candidate = c.text.slice(start, c.pos);
      if (/^[A-Za-z0-9\-._~+/]+=*$/.test(candidate)) token68 = candidate;
    } else {
      for (;;) {
        c.skipSeparators();
        if (c.done || !atParam(c)) break;
        const name = c.token().toLowerCase();
        c.skipSpace();
        c.pos++; // '='
        c.skipSpace();
        params[name] = c.peek() === '"' ? c.quoted() : c.bare();
        c.skipSpace();
      }
    }
    out.push(token68 === undefined ? { scheme: scheme.toLowerCase(), params } : { scheme: scheme.toLowerCase(), params, token68 });
  }
  return out;
}
