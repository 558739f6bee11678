/**
 * Image references (`[registry/]repository[:tag][@digest]`), parsed and normalised the
 * way Docker and containerd do (distribution `reference` grammar):
 *
 * - the first path component is the registry when it contains `.` or `:`, is
 *   `localhost`, or is a bracketed IPv6 address; otherwise the registry is `docker.io`;
 * - `index.docker.io` is `docker.io`; single-component Docker Hub names get `library/`;
 * - neither tag nor digest means tag `latest`; with both, the digest decides what is pulled;
 * - repository path components are lower-case (`[a-z0-9]+` joined by `.`, `_`, `__`, `-`).
 *
 * The registry *name* (`docker.io`) differs from the host the API is served on
 * (`registry-1.docker.io`); see {@link registryHost}.
 *
 * Local layouts (`oci:DIR[:TAG]`, `oci-archive:`, `docker-archive:`) and other transport
 * prefixes are not registry references: {@link isRegistryReference} says so and
 * {@link parseReference} rejects them with a message that names the transport.
 *
 * @example
 * ```ts
 * parseReference('alpine');                 // { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }
 * parseReference('localhost:5000/a/b@sha256:…'); // { registry: 'localhost:5000', repository: 'a/b', digest: 'sha256:…' }
 * registryHost('docker.io');                // 'registry-1.docker.io'
 * ```
 */
import { InvalidArgumentError } from '../io/errors.ts';
import { isDigest } from './digest.ts';

/** A repository in a registry. */
export interface Repository {
  /** Registry name with optional port, e.g. `docker.io`, `127.0.0.1:5000`, `[::1]:5000`. */
  readonly registry: string;
  /** Repository path, e.g. `library/alpine`. */
  readonly repository: string;
}

/** A repository plus a tag and/or digest. */
export interface Reference extends Repository {
  readonly tag?: string;
  readonly digest?: string;
}

export const DOCKER_HUB = 'docker.io';
export const DOCKER_HUB_HOST = 'registry-1.docker.io';

const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[a-fA-F0-9:.]+\\])(?::[0-9]{1,5})?$`);
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const NAME_MAX = 255;
const TRANSPORT = /^([a-z][a-z0-9+.-]*):/i;
const LOCAL_TRANSPORTS = new Set(['oci', 'oci-archive', 'docker-archive', 'dir', 'containers-storage', 'docker-daemon']);

function fail(input: string, why: string): never {
  throw new InvalidArgumentError(`Cannot parse image reference ${JSON.stringify(input.slice(0, 300))}: ${why}`);
}

/** Whether the text before the first `/` names a registry rather than a path component. */
function looksLikeRegistry(first: string): boolean {
  return first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('[') || first !== first.toLowerCase();
}

function splitName(input: string, name: string): Repository {
  const slash = name.indexOf('/');
  let registry = DOCKER_HUB;
  let path = name;
  if (slash >= 0 && looksLikeRegistry(name.slice(0, slash))) {
    registry = name.slice(0, slash);
    path = name.slice(slash + 1);
    if (!DOMAIN.test(registry)) fail(input, `invalid registry ${JSON.stringify(registry)}`);
    const port = /:(\d+)$/.exec(registry)?.[1];
    if (port !== undefined && Number(port) > 65535) fail(input, `invalid port ${port}`);
    registry = registry.toLowerCase();
    if (registry === 'index.docker.io') registry = DOCKER_HUB;
  }
  if (path === '') fail(input, 'repository is empty');
  for (const seg of path.split('/')) {
    if (!PATH_COMPONENT.test(seg)) {
      fail(input, seg === '' ? 'empty path component' : `invalid path component ${JSON.stringify(seg)} (lower-case letters, digits, ., _, - only)`);
    }
  }
  if (registry === DOCKER_HUB && !path.includes('/')) path = `library/${path}`;
  if (registry.length + 1 + path.length > NAME_MAX) fail(input, `name longer than ${NAME_MAX} characters`);
  return { registry, repository: path };
}

function rejectTransport(input: string): void {
  if (input.includes('://')) fail(input, 'a reference has no URL scheme (write registry/repository:tag)');
  const m = TRANSPORT.exec(input);
  const t = m?.[1]?.toLowerCase();
  // `oci:DIR` is a local layout; `oci:5000/x` would be a registry named oci with a port.
  if (t !== undefined && LOCAL_TRANSPORTS.has(t) && !/^\d/.test(input.slice(t.length + 1))) fail(input, `${t}: names a local image, not a registry reference`);
}

/** Parses `[registry/]repository` (no tag, no digest). */
export function parseRepository(input: string): Repository {
  rejectTransport(input);
  if (input.includes('@')) fail(input, 'a repository has no digest');
  const lastSlash = input.lastIndexOf('/');
  if (input.slice(lastSlash + 1).includes(':')) fail(input, 'a repository has no tag');
  return splitName(input, input);
}

/** Parses and normalises an image reference. Throws `InvalidArgumentError`. */
export function parseReference(input: string): Reference {
  if (input === '') fail(input, 'empty');
  rejectTransport(input);
  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest)) fail(input, `invalid digest ${JSON.stringify(digest.slice(0, 100))}`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) fail(input, `invalid tag ${JSON.stringify(tag.slice(0, 150))}`);
  }
  const repo = splitName(input, rest);
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { ...repo, ...(tag === undefined ? {} : { tag }), ...(digest === undefined ? {} : { digest }) };
}

/** Whether `input` parses as a registry reference (false for `oci:DIR:TAG` and friends). */
export function isRegistryReference(input: string): boolean {
  try {
    parseReference(input);
    return true;
  } catch {
    return false;
  }
}

/** The canonical string: `registry/repository[:tag][@digest]`. */
export function formatReference(ref: Reference): string {
  return `${ref.registry}/${ref.repository}${ref.tag === undefined ? '' : `:${ref.tag}`}${ref.digest === undefined ? '' : `@${ref.digest}`}`;
}

/** The host serving the registry API: `docker.io` → `registry-1.docker.io`, others unchanged. */
export function registryHost(registry: string): string {
  return registry === DOCKER_HUB || registry === 'index.docker.io' ? DOCKER_HUB_HOST : registry;
}
