/**
 * A last-resort guard for tests that mount our FUSE file system: a detached shell that,
 * after `seconds`, aborts every `fuse.obd` connection mounted under `prefix` and detaches
 * the mounts. It lives outside the test process on purpose: a request that never gets
 * an answer can block the test's own threads (even the main thread, e.g. inside a
 * spawn), and then no timer of the test fires. Stop it in `after()`.
 */
import { spawn } from 'node:child_process';

export function startFuseWatchdog(prefix: string, seconds: number): { pid: number; stop(): void } {
  const script = `sleep ${seconds}
mountpoint -q /sys/fs/fuse/connections || mount -t fusectl none /sys/fs/fuse/connections
grep ' fuse.obd ' /proc/self/mountinfo | while read id parent dev root mp rest; do
  case "$mp" in "$0"*) echo "fuse watchdog: aborting \${dev#0:} at $mp" >&2; echo 1 > /sys/fs/fuse/connections/\${dev#0:}/abort; umount -l "$mp";; esac
done`;
  const child = spawn('sh', ['-c', script, prefix], { detached: true, stdio: ['ignore', 'ignore', 'inherit'] });
  child.unref();
  return {
    pid: child.pid ?? -1,
    stop() {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
  };
}
