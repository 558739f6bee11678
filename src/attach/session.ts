/**
 * An attach session: a device served through FUSE + loop, optionally with its file
 * system mounted, recorded in `<runDir>/sessions/<pid>.json` so `obd umount` and
 * `obd detach` find the process that owns it. `stop()` tears everything down in
 * order (umount, loop, FUSE, record), also after partial failures.
 *
 * Two forms: {@link startSession} serves an opened device in this process;
 * {@link startSupervisedSession} makes this process the supervisor of a serving child
 * process that is restarted whenever it dies (the record then names the child too).
 */
import { mkdir, readdir, readFile, rm, writeFile, rename } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BlockDevice } from '../io/block-device.ts';
import { FailedPreconditionError, NotFoundError } from '../io/errors.ts';
import { attachDevice, type Attachment } from './attach-device.ts';
import { attachSupervised } from './attach-supervised.ts';
import type { PreparedServer, ServerCommand } from './fuse-supervisor.ts';
import { isErofs, isErofsFile, mkfs, mountFs, parseFsSpec, umountFs, type FsSpec } from './filesystem.ts';

export const DEFAULT_RUN_DIR = '/run/obd';

export interface SessionRecord {
  /** The process that owns the session (SIGTERM stops it). */
  pid: number;
  /** The process serving the device: `pid`, or the supervised child (updated on restart). */
  serverPid?: number;
  /** Serving processes started after the first (supervised sessions). */
  restarts?: number;
  blockDevice: string;
  file: string;
  mountpoint?: string;
  target: string;
  writable: boolean;
}

export interface SessionOptions {
  target: string;
  runDir?: string;
  /** Mount the file system here. */
  mountpoint?: string;
  /** `fstype[;mountopts[;mkfsopts]]`, default ext4. */
  fsType?: string;
  writable?: boolean;
  /** Make a file system first (a fresh writable device). */
  mkfs?: boolean;
  workers?: number;
  frontend?: 'fuse' | 'nbd';
}

export interface Session {
  readonly record: SessionRecord;
  /** Resolves when the FUSE server stops (also on an abort from outside). */
  readonly closed: Promise<void>;
  stop(): Promise<void>;
}

function sessionsDir(runDir: string): string {
  return join(runDir, 'sessions');
}

export async function startSession(device: BlockDevice, options: SessionOptions): Promise<Session> {
  const writable = options.writable === true;
  if (writable && device.readOnly) {
    throw new FailedPreconditionError(`Cannot attach ${options.target} read-write: the device has no writable layer`);
  }
  const erofs = await isErofs(device);
  const attachment: Attachment = await attachDevice(device, {
    runDir: options.runDir ?? DEFAULT_RUN_DIR,
    ...(options.workers !== undefined ? { workers: options.workers } : {}),
    ...(options.frontend !== undefined ? { frontend: options.frontend } : {}),
  });
  return completeSession(attachment, { ...options, erofs: async () => erofs });
}

/** Options of {@link startSupervisedSession}. */
export interface SupervisedSessionOptions extends Omit<SessionOptions, 'frontend'> {
  /** What the serving child opens (a device config). */
  device: unknown;
  /** How to start a serving child (`obd serve-fuse …`). */
  server: ServerCommand;
  /** Keep a loaded spare serving process. Default true. */
  spare?: boolean;
  /** A serving child started ahead of need (see `PreparedServer`); taken over in any case. */
  prepared?: PreparedServer;
}

/**
 * Like {@link startSession}, but this process only supervises: a child process opens
 * and serves the device and is restarted whenever it dies (FUSE_NOTIFY_RESEND), so the
 * loop device and the mounted file system survive it.
 */
export async function startSupervisedSession(options: SupervisedSessionOptions): Promise<Session> {
  let update: (info: { pid: number; restarts: number }) => void = () => {};
  const attachment = await attachSupervised({
    server: options.server,
    device: options.device,
    runDir: options.runDir ?? DEFAULT_RUN_DIR,
    onServer: (info) => update(info),
    ...(options.workers !== undefined ? { workers: options.workers } : {}),
    ...(options.spare !== undefined ? { spare: options.spare } : {}),
    ...(options.prepared !== undefined ? { prepared: options.prepared } : {}),
  });
  if (options.writable === true && attachment.readOnly) {
    await attachment.detach().catch(() => {});
    throw new FailedPreconditionError(`Cannot attach ${options.target} read-write: the device has no writable layer`);
  }
  let session: Session & { recordPath: string };
  try {
    session = await completeSession(attachment, { ...options, erofs: () => isErofsFile(attachment.file) });
  } catch (e) {
    await attachment.detach().catch(() => {});
    throw e;
  }
  const record = session.record;
  record.serverPid = attachment.serverPid;
  record.restarts = attachment.restarts;
  await writeRecord(session.recordPath, record);
  let writing = Promise.resolve();
  update = (info) => {
    record.serverPid = info.pid;
    record.restarts = info.restarts;
    writing = writing.then(() => writeRecord(session.recordPath, record)).catch(() => {});
  };
  return session;
}

async function writeRecord(path: string, record: SessionRecord): Promise<void> {
  await writeFile(`${path}.tmp`, JSON.stringify(record));
  await rename(`${path}.tmp`, path);
}

/** mkfs, mount and the session record over an attachment; on failure detaches it. */
async function completeSession(
  attachment: Attachment,
  options: Omit<SessionOptions, 'frontend'> & { erofs: () => Promise<boolean> },
): Promise<Session & { recordPath: string }> {
  const runDir = options.runDir ?? DEFAULT_RUN_DIR;
  const writable = options.writable === true;
  let spec: FsSpec = parseFsSpec(options.fsType ?? 'ext4');
  const mountpoint = options.mountpoint === undefined ? undefined : resolve(options.mountpoint);
  let mounted = false;
  const record: SessionRecord = {
    pid: process.pid,
    serverPid: process.pid,
    blockDevice: attachment.blockDevice,
    file: attachment.file,
    target: options.target,
    writable,
    ...(mountpoint !== undefined ? { mountpoint } : {}),
  };
  const recordPath = join(sessionsDir(runDir), `${process.pid}-${attachment.blockDevice.replace(/\W/g, '_')}.json`);
  const stop = async (): Promise<void> => {
    const errors: unknown[] = [];
    if (mounted && mountpoint !== undefined) await umountFs(mountpoint).catch((e: unknown) => errors.push(e));
    await attachment.detach().catch((e: unknown) => errors.push(e));
    await rm(recordPath, { force: true });
    if (errors.length > 0) throw errors[0];
  };
  const asErofs = (s: FsSpec): FsSpec => ({ ...s, fstype: 'erofs', mountOptions: [] });
  try {
    if (options.mkfs === true) {
      if (await options.erofs()) spec = asErofs(spec);
      await mkfs(attachment.blockDevice, spec);
    }
    if (mountpoint !== undefined) {
      // The file system asked for first; an EROFS image (magic at byte 1024, which
      // upstream mounts as erofs whatever was asked) fails that mount and is looked for
      // only then, so the usual mount does not wait for a read of its own.
      try {
        await mountFs(attachment.blockDevice, mountpoint, { spec, writable });
      } catch (e) {
        if (spec.fstype === 'erofs' || !(await options.erofs())) throw e;
        spec = asErofs(spec);
        await mountFs(attachment.blockDevice, mountpoint, { spec, writable });
      }
      mounted = true;
    }
    await mkdir(sessionsDir(runDir), { recursive: true, mode: 0o700 });
    await writeRecord(recordPath, record);
  } catch (e) {
    await stop().catch(() => {});
    throw e;
  }
  let stopping: Promise<void> | undefined;
  return {
    record,
    recordPath,
    closed: attachment.closed,
    stop: () => (stopping ??= stop()),
  };
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Live session records (records of dead processes are removed). */
export async function listSessions(runDir = DEFAULT_RUN_DIR): Promise<SessionRecord[]> {
  const dir = sessionsDir(runDir);
  const names = await readdir(dir).catch(() => [] as string[]);
  const out: SessionRecord[] = [];
  for (const name of names.filter((n) => n.endsWith('.json'))) {
    try {
      const r = JSON.parse(await readFile(join(dir, name), 'utf8')) as SessionRecord;
      if (alive(r.pid)) out.push(r);
    } catch {
      // a record being written or removed
    }
  }
  return out;
}

/** Finds the session serving a mount point, a block device or a target. */
export async function findSession(key: string, runDir = DEFAULT_RUN_DIR): Promise<SessionRecord> {
  const abs = resolve(key);
  const found = (await listSessions(runDir)).find((r) => r.mountpoint === abs || r.blockDevice === key || r.target === key);
  if (found === undefined) throw new NotFoundError(`Cannot find an obd session for ${key}: nothing attached or mounted there`);
  return found;
}

/** Asks the serving process to tear down and waits until it has exited. */
export async function stopSession(record: SessionRecord, options: { timeoutMs?: number } = {}): Promise<void> {
  process.kill(record.pid, 'SIGTERM');
  const deadline = Date.now() + (options.timeoutMs ?? 30_000);
  while (alive(record.pid)) {
    if (Date.now() > deadline) throw new FailedPreconditionError(`Cannot stop obd process ${record.pid}: still running after SIGTERM`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
