/**
 * The registry and cache flags of `remote-options.ts` as an option table alone,
 * for commands that only pass them on (`obd rpull` through the daemon's pull socket loads
 * no registry code).
 */
import type { OptionSpec } from './args.ts';

export const REMOTE_OPTIONS: OptionSpec = {
  'plain-http': { type: 'string', multiple: true },
  insecure: { type: 'string', multiple: true },
  'cred-file': { type: 'string' },
  'docker-config': { type: 'string' },
  'cache-dir': { type: 'string' },
  'cache-size-gb': { type: 'string' },
  'refill-kb': { type: 'string' },
  concurrency: { type: 'string' },
};

