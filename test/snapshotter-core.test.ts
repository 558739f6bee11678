/**
 * The snapshotter conformance suite (containerd's testsuite, translated) against
 * `createSnapshotter` called directly. Over-the-wire runs are in
 * snapshotter-grpc.test.ts; overlaybd-specific behaviour in snapshotter-overlaybd.test.ts.
 */
import { createSnapshotter } from '../src/snapshotter/snapshotter.ts';
import { snapshotterSuite } from './suites/snapshotter-suite.ts';

snapshotterSuite('createSnapshotter', async (root) => {
  const snapshotter = await createSnapshotter(root);
  return { snapshotter, cleanup: () => snapshotter.close() };
});
