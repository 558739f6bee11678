/**
 * Starts a test server listening on 127.0.0.1 at an ephemeral port; resolves with the port,
 * rejects with the server's error (e.g. EADDRINUSE).
 *
 * @example
 * ```ts
 * const port = await listenOnLoopback(createServer(handler));
 * ```
 */
import type { AddressInfo, Server } from 'node:net';

export async function listenOnLoopback(server: Server): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  return (server.address() as AddressInfo).port;
}
