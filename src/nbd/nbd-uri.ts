/**
 * The NBD URI (NetworkBlockDevice/nbd `doc/uri.md`) of an export at an endpoint, as
 * accepted by libnbd tools (`nbdinfo`, `nbdcopy`, `nbdfuse`) and qemu.
 *
 * @example
 * ```ts
 * nbdUri({ path: '/run/obd.sock' }, 'disk'); // 'nbd+unix:///disk?socket=/run/obd.sock'
 * nbdUri({ host: '127.0.0.1', port: 10809 }, 'disk'); // 'nbd://127.0.0.1:10809/disk'
 * ```
 */
import type { NbdEndpoint } from './nbd-server.ts';

function encodeSocketPath(path: string): string {
  return encodeURIComponent(path).replaceAll('%2F', '/');
}

export function nbdUri(endpoint: NbdEndpoint, exportName = ''): string {
  const name = encodeURIComponent(exportName);
  if ('path' in endpoint) return `nbd+unix:///${name}?socket=${encodeSocketPath(endpoint.path)}`;
  const host = endpoint.host.includes(':') ? `[${endpoint.host}]` : endpoint.host;
  return `nbd://${host}:${endpoint.port}/${name}`;
}
