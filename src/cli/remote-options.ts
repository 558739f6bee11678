/**
 * Registry and cache flags shared by the commands that reach registries:
 * `--plain-http HOST` (repeatable), `--insecure HOST` (repeatable), `--cred-file F`
 * (upstream cred.json), `--docker-config F` (docker config.json; default
 * ~/.docker/config.json), `--cache-dir D`, `--cache-size-gb N`, `--refill-kb N`,
 * `--concurrency N`.
 */
import type { Parsed } from './args.ts';
import { REMOTE_OPTIONS } from './remote-option-spec.ts';
import { integer, str } from './args.ts';
import { RemoteAccess, type RemoteAccessOptions } from '../image/remote-access.ts';
import { chainCredentials, credJsonCredentials, dockerConfigCredentials } from '../registry/credentials.ts';

export { REMOTE_OPTIONS };

function list(p: Parsed, name: string): string[] {
  const v = p.values[name];
  return Array.isArray(v) ? (v as string[]) : [];
}

export function remoteAccessOptions(p: Parsed): RemoteAccessOptions {
  const credFile = str(p, 'cred-file');
  const dockerConfig = str(p, 'docker-config');
  const providers = [
    ...(credFile !== undefined ? [credJsonCredentials(credFile)] : []),
    dockerConfigCredentials(dockerConfig !== undefined ? { path: dockerConfig } : {}),
  ];
  const cacheDir = str(p, 'cache-dir');
  const sizeGb = str(p, 'cache-size-gb');
  const refill = str(p, 'refill-kb');
  const concurrency = str(p, 'concurrency');
  return {
    credentials: chainCredentials(...providers),
    plainHttp: list(p, 'plain-http'),
    insecure: list(p, 'insecure'),
    ...(cacheDir !== undefined ? { cacheDir } : {}),
    ...(sizeGb !== undefined ? { cacheSizeBytes: integer(sizeGb, '--cache-size-gb') * 2 ** 30 } : {}),
    reader: {
      ...(refill !== undefined ? { refillSize: integer(refill, '--refill-kb') * 1024 } : {}),
      ...(concurrency !== undefined ? { concurrency: integer(concurrency, '--concurrency') } : {}),
    },
  };
}

export function remoteAccess(p: Parsed): RemoteAccess {
  return new RemoteAccess(remoteAccessOptions(p));
}

export function plainHttpHosts(p: Parsed): string[] {
  return list(p, 'plain-http');
}
