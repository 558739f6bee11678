/**
 * Extended attributes without a native binding: Node has no `setxattr`, so they are set
 * by `setfattr` (Debian package `attr`) — one `setfattr -h --restore=-` process for a
 * whole batch of files (the getfattr dump format on standard input), falling back to
 * one process per file when the batch reports failures, to tell which ones may be
 * ignored (erofs-and-fs.md §2.3 step 5: EPERM on `user.*` for files that are neither
 * regular files nor directories, and ENOTSUP).
 */
import { spawn } from 'node:child_process';
import { FailedPreconditionError } from '../io/errors.ts';

/** Extended attributes of one path. */
export interface XattrJob {
  path: string;
  /** Names the tar entry in errors and warnings. */
  what: string;
  /** Whether the object is a regular file or a directory (EPERM on `user.*` otherwise ignored). */
  regularOrDir: boolean;
  xattrs: ReadonlyMap<string, Uint8Array>;
}

/** An ignored failure, reported as a warning. */
export interface XattrWarning {
  what: string;
  message: string;
}

const TIMEOUT_MS = 120_000;

/** getfattr's quoting: bytes outside printable ASCII, `\` and `=` as `\ooo`. */
function quote(bytes: Uint8Array): string {
  let out = '';
  for (const c of bytes) {
    out += c <= 0x20 || c >= 0x7f || c === 0x5c || c === 0x3d ? `\\${c.toString(8).padStart(3, '0')}` : String.fromCharCode(c);
  }
  return out;
}

function dump(jobs: readonly XattrJob[]): string {
  const enc = new TextEncoder();
  let text = '';
  for (const j of jobs) {
    text += `# file: ${quote(enc.encode(j.path))}\n`;
    for (const [name, value] of j.xattrs) {
      text += `${quote(enc.encode(name))}=${value.length === 0 ? '""' : `0s${Buffer.from(value).toString('base64')}`}\n`;
    }
    text += '\n';
  }
  return text;
}

function runSetfattr(input: string): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('setfattr', ['-h', '--restore=-'], { stdio: ['pipe', 'ignore', 'pipe'] });
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS);
    child.stderr.setEncoding('utf8').on('data', (t: string) => {
      if (stderr.length < 65536) stderr += t;
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new FailedPreconditionError(`Cannot set extended attributes: cannot run setfattr (${e.message}); install the attr package`, { cause: e }));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stderr });
    });
    child.stdin.on('error', () => {}); // reported through the exit status
    child.stdin.end(input);
  });
}

/**
 * Sets the extended attributes of every job. Resolves with the ignored failures;
 * rejects naming the entry on any other failure.
 */
export async function setXattrs(jobs: readonly XattrJob[]): Promise<XattrWarning[]> {
  if (jobs.length === 0) return [];
  const all = await runSetfattr(dump(jobs));
  if (all.code === 0) return [];
  const warnings: XattrWarning[] = [];
  for (const job of jobs) {
    for (const [name, value] of job.xattrs) {
      const one = await runSetfattr(dump([{ ...job, xattrs: new Map([[name, value]]) }]));
      if (one.code === 0) continue;
      const msg = one.stderr.trim().split('\n').pop() ?? '';
      const notSupported = /not supported/i.test(msg);
      const permitted = /not permitted/i.test(msg) && name.startsWith('user.') && !job.regularOrDir;
      if (notSupported || permitted) {
        warnings.push({ what: job.what, message: `extended attribute ${name} not set: ${msg}` });
        continue;
      }
      throw new FailedPreconditionError(`Cannot set extended attribute ${name} of ${job.what}: ${msg || `setfattr exited ${one.code}`}`);
    }
  }
  return warnings;
}
