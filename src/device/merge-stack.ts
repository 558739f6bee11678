/**
 * Merge / flatten (lsmt.md §15, `overlaybd-merge`): every layer of a stacked device,
 * the upper included, compacted into one sealed blob.
 */
import type { ReadOnlyLayer } from '../formats/lsmt/layer.ts';
import type { LsmtStack } from '../formats/lsmt/stack.ts';
import { commitLayer } from '../formats/lsmt/commit.ts';
import { NIL_UUID } from '../formats/lsmt/header-trailer.ts';
import { writeLayerFile, type LayerSinkOptions } from '../formats/layer-files.ts';
import type { ByteSink } from '../io/byte-sink.ts';

function headerOf(layer: ReadOnlyLayer): { virtualSize: number; parentUuid: string } {
  const h = (layer as Partial<{ header: { virtualSize: number; parentUuid: string } }>).header;
  return h ?? { virtualSize: layer.virtualSize, parentUuid: layer.parentUuid };
}

/** Writes the flattened stack into `sink` (not closed). */
export async function mergeStack(stack: LsmtStack, sink: ByteSink): Promise<void> {
  const lowers = stack.lowers;
  const upper = stack.upper;
  // virtual_size from the topmost file's header, parent_uuid from the bottom file's header
  const top = upper ?? lowers[lowers.length - 1];
  const bottom = lowers[0];
  const virtualSize = upper !== undefined ? upper.virtualSize : top !== undefined ? headerOf(top as ReadOnlyLayer).virtualSize : 0;
  const parentUuid = bottom !== undefined ? headerOf(bottom).parentUuid : (upper?.parentUuid ?? NIL_UUID);
  await commitLayer(
    { segments: stack.segments(), sources: stack.files(), header: { virtualSize, parentUuid } },
    sink,
  );
}

/** `overlaybd-merge CONFIG OUT`: flatten into a new file (ZFile lz4 4 KiB by default at the CLI). */
export async function mergeStackToFile(
  stack: LsmtStack,
  out: string,
  options: LayerSinkOptions & { overwrite?: boolean },
): Promise<void> {
  await writeLayerFile(out, options, (sink) => mergeStack(stack, sink));
}
