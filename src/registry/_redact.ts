/**
 * Credential-free renderings of URLs for error messages, debug logs and diagnostics
 * events: user info is dropped and the values of query parameters that look like
 * secrets (presigned-URL signatures, tokens, upload state) are replaced.
 */
const SECRET_PARAM = /sig|token|credential|secret|passw|auth|key|_state|session|policy/i;

/** Returns `url` without user info and with secret-looking query values replaced by `REDACTED`. */
export function redactUrl(url: URL | string): string {
  let u: URL;
  try {
    u = new URL(String(url));
  } catch {
    return '<invalid URL>';
  }
  u.username = '';
  u.password = '';
  if (u.search.length > 1) {
    u.search = u.search
      .slice(1)
      .split('&')
      .map((pair) => {
        const eq = pair.indexOf('=');
        const name = eq < 0 ? pair : pair.slice(0, eq);
        return eq >= 0 && SECRET_PARAM.test(name) ? `${name}=REDACTED` : pair;
      })
      .join('&');
  }
  return u.toString();
}
