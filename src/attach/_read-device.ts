/**
 * The module FUSE reader threads load to serve reads of a read-only device themselves
 * (`FuseLocalReads`, see `local-reads.ts`): the same stack `openDevice` builds from local
 * layer files (tar → ZFile → LSMT), but over synchronous file readers.
 */
import type { BlockDevice } from '../io/block-device.ts';
import { openLayerBlob } from '../formats/open-layer-blob.ts';
import { openRoLayer } from '../formats/lsmt/ro-layer.ts';
import type { ReadOnlyLayer } from '../formats/lsmt/layer.ts';
import { LsmtStack } from '../formats/lsmt/stack.ts';
import { SyncFileReader } from './_sync-file-reader.ts';

/** The argument of {@link openReadDevice}. */
export interface ReadDeviceArgs {
  /** Layer blob files, bottom first. */
  lowers: string[];
}

/** Opens the layers read-only over synchronous readers and stacks them. */
export async function openReadDevice(args: ReadDeviceArgs): Promise<BlockDevice> {
  const layers: ReadOnlyLayer[] = [];
  try {
    for (const [i, file] of args.lowers.entries()) {
      const raw = new SyncFileReader(file);
      try {
        const { reader } = await openLayerBlob(raw);
        layers.push(await openRoLayer(reader, { what: `layer ${i} (${file})` }));
      } catch (e) {
        await raw.close();
        throw e;
      }
    }
    return await LsmtStack.create({ lowers: layers });
  } catch (e) {
    await Promise.all(layers.map((l) => l.close().catch(() => {})));
    throw e;
  }
}
