/**
 * Messages between the FUSE supervisor and a serving child process (node IPC channel).
 *
 * The child has the supervisor's `/dev/fuse` fd as its fd 3. Sequence: child `hello`
 * (loaded) → supervisor `open` (the device config) → child `opened` (size, read-only)
 * → supervisor `serve` (the served file, and for a child that takes over, the INIT
 * reply and `resend`) → child `serving` (readers run) and, on a fresh connection, `init`
 * once the kernel's INIT is answered. `failed` reports why the child cannot go on
 * (it then exits 1). The child exits 0 only when the connection is over (ENODEV) or
 * after `stop`.
 */
import type { FuseFileConfig } from '../fuse/request-handler.ts';
import type { InitOut } from '../fuse/protocol.ts';

/** fd number of the inherited `/dev/fuse` in the child. */
export const CHILD_FUSE_FD = 3;

/** Supervisor → child. */
export type SupervisorMessage =
  | { t: 'open'; device: unknown }
  | { t: 'serve'; file: FuseFileConfig; initialized?: InitOut; resend: boolean; workers: number; debug: boolean }
  | { t: 'stop' };

/** Child → supervisor. */
export type ServerMessage =
  | { t: 'hello' }
  | { t: 'opened'; size: number; readOnly: boolean }
  | { t: 'serving' }
  | { t: 'init'; init: InitOut }
  | { t: 'failed'; code: string; message: string };
