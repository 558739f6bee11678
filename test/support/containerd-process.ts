/**
 * A private containerd 1.6 for tests and benches: its config (root, state and sockets in
 * `dir`, CRI disabled, optionally our snapshotter as proxy plugin `overlaybd`) and the
 * process, in a process group of its own so a teardown can signal all of it; with the
 * small process helpers both environments use (`sh`, `alive`, `sleep`, `stopSessions`).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { listSessions } from '../../src/attach/session.ts';

/** Runs a program; rejects with its stderr on failure or after `timeoutMs` (then SIGKILLed). */
export function sh(argv: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(argv[0] as string, argv.slice(1), { timeout: timeoutMs, maxBuffer: 64 << 20, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${argv.join(' ')} failed: ${err.message} ${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Whether process `pid` exists. */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * SIGTERMs every `obd attach` session recorded under `runDir` (each tears down its mount,
 * loop device and FUSE connection) and waits up to 15 s for them; returns their pids
 * (for a SIGKILL once the mounts are cleaned).
 */
export async function stopSessions(runDir: string): Promise<number[]> {
  const pids = (await listSessions(runDir)).map((s) => s.pid);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // gone
    }
  }
  for (let i = 0; i < 150 && pids.some(alive); i++) await sleep(100);
  return pids;
}

/** Options of {@link spawnContainerd}. */
export interface SpawnContainerdOptions {
  /** Holds config.toml, containerd.log, root/ and state/. */
  dir: string;
  /** containerd's gRPC socket (ttrpc gets `<socket>.ttrpc`). */
  socket: string;
  /** Our snapshotter's socket, declared as proxy snapshotter `overlaybd`. */
  snapshotterSocket?: string;
}

/** The config.toml of a private containerd. */
export function containerdConfigToml(o: SpawnContainerdOptions): string {
  const lines = [
    'version = 2',
    `root = "${join(o.dir, 'root')}"`,
    `state = "${join(o.dir, 'state')}"`,
    'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
    '[grpc]',
    `  address = "${o.socket}"`,
    '[ttrpc]',
    `  address = "${o.socket}.ttrpc"`,
    '[debug]',
    '  address = ""',
  ];
  if (o.snapshotterSocket !== undefined) lines.push('[proxy_plugins.overlaybd]', '  type = "snapshot"', `  address = "${o.snapshotterSocket}"`);
  return `${lines.join('\n')}\n`;
}

/** Writes the config and starts containerd (detached, log in `dir/containerd.log`); the caller waits for it and stops it. */
export async function spawnContainerd(o: SpawnContainerdOptions): Promise<ChildProcess> {
  const config = join(o.dir, 'config.toml');
  await writeFile(config, containerdConfigToml(o));
  const log = openSync(join(o.dir, 'containerd.log'), 'w');
  try {
    return spawn('containerd', ['--config', config], { detached: true, stdio: ['ignore', log, log] });
  } finally {
    closeSync(log);
  }
}

/**
 * Teardown of a private containerd: SIGKILLs and removes its tasks, removes its
 * containers (`ctr` runs `ctr -a SOCK -n NS …`), then SIGTERMs its process group,
 * SIGKILL after 10 s. Each step's failure goes to `report` and the next step runs.
 */
export async function stopContainerd(
  containerd: ChildProcess,
  ctr: (...args: string[]) => Promise<string>,
  report: (what: string, e: Error) => void,
): Promise<void> {
  if (containerd.exitCode !== null || containerd.signalCode !== null) return;
  const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    await fn().catch((e: Error) => report(what, e));
  };
  const ids = async (kind: string): Promise<string[]> => (await ctr(kind, 'ls', '-q')).split('\n').filter(Boolean);
  await step('tasks', async () => {
    for (const id of await ids('tasks')) await ctr('tasks', 'kill', '-s', 'SIGKILL', id).catch(() => undefined);
    for (const id of await ids('tasks')) await ctr('tasks', 'rm', '-f', id).catch(() => undefined);
  });
  await step('containers', async () => {
    for (const id of await ids('containers')) await ctr('containers', 'rm', id);
  });
  await step('containerd', async () => {
    const exited = new Promise<void>((r) => containerd.once('exit', () => r()));
    process.kill(-(containerd.pid as number), 'SIGTERM');
    const timer = setTimeout(() => {
      try {
        process.kill(-(containerd.pid as number), 'SIGKILL');
      } catch {
        // already gone
      }
    }, 10_000);
    await exited;
    clearTimeout(timer);
  });
}
