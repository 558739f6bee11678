import type { Command } from '../command.ts';
import { parse, str } from '../args.ts';
import { REMOTE_OPTIONS, remoteAccessOptions } from '../remote-options.ts';
import { rpull, DEFAULT_CONTAINERD_ADDRESS } from '../../snapshotter/rpull.ts';

const usage =
  'obd rpull REF [--address /run/containerd/containerd.sock] [--namespace default] [--snapshotter overlaybd] [--plain-http HOST] [--insecure HOST] [--docker-config F] [--cred-file F]';

/** `obd rpull REF`: upstream's `ctr rpull` — pull an overlaybd image into containerd without its layer data. */
export const rpullCommand: Command = {
  name: 'rpull',
  summary: 'pull an overlaybd image into containerd on demand (no layer download), like ctr rpull',
  usage,
  async run(argv, io) {
    const p = parse(argv, {
      options: { ...REMOTE_OPTIONS, address: { type: 'string', short: 'a' }, namespace: { type: 'string', short: 'n' }, snapshotter: { type: 'string' } },
      usage,
      min: 1,
      max: 1,
    });
    const [ref] = p.positionals as [string];
    const access = remoteAccessOptions(p);
    const result = await rpull(ref, {
      containerdAddress: str(p, 'address') ?? DEFAULT_CONTAINERD_ADDRESS,
      namespace: str(p, 'namespace') ?? 'default',
      snapshotter: str(p, 'snapshotter') ?? 'overlaybd',
      registry: {
        ...(access.credentials === undefined ? {} : { credentials: access.credentials }),
        plainHttp: access.plainHttp ?? [],
        insecure: access.insecure ?? [],
      },
    });
    for (const [i, l] of result.layers.entries()) io.out(`layer ${i} ${l.digest} (${l.size} bytes): ${l.status === 'committed' ? 'remote snapshot' : 'already present'} ${l.chainId}\n`);
    io.out(`${result.name}: image ${result.image}, target ${result.target.digest}, ${result.bytesFetched} bytes fetched\n`);
  },
};
