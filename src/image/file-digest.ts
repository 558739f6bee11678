/**
 * The OCI digest and size of a file, read in large chunks (the next chunk is read on the
 * thread pool while the current one is hashed).
 *
 * @example
 * ```ts
 * const { digest, size } = await fileDigest('work/0000/overlaybd.commit'); // 'sha256:…'
 * ```
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';

const CHUNK = 4 << 20;

export async function fileDigest(path: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  const fh = await open(path, 'r');
  try {
    const bufs = [Buffer.allocUnsafe(CHUNK), Buffer.allocUnsafe(CHUNK)];
    let size = 0;
    let turn = 0;
    let reading = fh.read(bufs[0] as Buffer, 0, CHUNK, 0);
    for (;;) {
      const { bytesRead, buffer } = await reading;
      if (bytesRead === 0) break;
      size += bytesRead;
      turn ^= 1;
      reading = fh.read(bufs[turn] as Buffer, 0, CHUNK, size);
      h.update(buffer.subarray(0, bytesRead));
    }
    return { digest: `sha256:${h.digest('hex')}`, size };
  } finally {
    await fh.close();
  }
}
