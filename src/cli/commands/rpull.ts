/**
 * `obd rpull REF`: upstream's `ctr rpull` — pull an overlaybd image into containerd
 * without its layer data. When the snapshotter daemon serves its pull socket
 * (`--daemon`, default /run/overlaybd-snapshotter/rpull.sock), the pull runs there, with
 * its clients loaded and connected (src/snapshotter/pull-socket.ts); otherwise, or with
 * `--no-daemon`, in this process. Either way it is the same pull, printing the same lines.
 */
import { isAbsolute, resolve } from 'node:path';
import type { Command } from '../command.ts';
import type { CliIo } from '../io.ts';
import { flag, parse, str, type OptionSpec } from '../args.ts';
import { REMOTE_OPTIONS } from '../remote-option-spec.ts';
import { callPullSocket } from '../../snapshotter/pull-socket.ts';
import { dockerConfigPath } from '../../registry/credentials.ts';

/** Where the daemon's pull socket is with upstream's default snapshotter address. */
export const DEFAULT_PULL_SOCKET = '/run/overlaybd-snapshotter/rpull.sock';

const usage =
  'obd rpull REF [--address /run/containerd/containerd.sock] [--namespace default] [--snapshotter overlaybd] [--plain-http HOST] [--insecure HOST] [--docker-config F] [--cred-file F] [--daemon SOCKET | --no-daemon]';

const OPTIONS: OptionSpec = {
  ...REMOTE_OPTIONS,
  address: { type: 'string', short: 'a' },
  namespace: { type: 'string', short: 'n' },
  snapshotter: { type: 'string' },
  daemon: { type: 'string' },
  'no-daemon': { type: 'boolean' },
};

/**
 * The arguments the daemon runs the pull with: this process's meaning made explicit
 * (file paths absolute, the docker config this user would read), and `--no-daemon`.
 */
function forDaemon(argv: string[]): string[] {
  const out: string[] = [];
  let dockerConfig = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const [name, inline] = a.startsWith('--') && a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    if (name === '--daemon') {
      if (inline === undefined) i++;
      continue;
    }
    if (name === '--docker-config' || name === '--cred-file') {
      const value = inline ?? argv[++i];
      if (value === undefined) break;
      if (name === '--docker-config') dockerConfig = true;
      out.push(name, isAbsolute(value) ? value : resolve(value));
      continue;
    }
    out.push(a);
  }
  if (!dockerConfig) out.push('--docker-config', resolve(dockerConfigPath()));
  return [...out, '--no-daemon'];
}

/** Pulls in this process (the daemon's handler runs this too). */
export async function rpullHere(argv: string[], io: CliIo): Promise<void> {
  const p = parse(argv, { options: OPTIONS, usage, min: 1, max: 1 });
  const [ref] = p.positionals as [string];
  const [{ rpull, DEFAULT_CONTAINERD_ADDRESS }, { remoteAccessOptions }] = await Promise.all([import('../../snapshotter/rpull.ts'), import('../remote-options.ts')]);
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
}

export const rpullCommand: Command = {
  name: 'rpull',
  summary: 'pull an overlaybd image into containerd on demand (no layer download), like ctr rpull',
  usage,
  async run(argv, io) {
    const p = parse(argv, { options: OPTIONS, usage, min: 1, max: 1 });
    if (!flag(p, 'no-daemon')) {
      const out = await callPullSocket(str(p, 'daemon') ?? DEFAULT_PULL_SOCKET, forDaemon(argv));
      if (out !== undefined) {
        io.out(out);
        return;
      }
    }
    await rpullHere(argv, io);
  },
};
