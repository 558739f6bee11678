/**
 * Flattens a read-only stack of local layer files into a `FuseExtentTable` for the
 * native FUSE READ path: the merged LSMT index (what `LsmtStack` reads), each entry's
 * tag resolved to its layer file, with the tar wrapper's offset and the ZFile jump
 * table of each layer. Opens the layers the way `openDevice` does and closes them
 * again; the table is plain data.
 */
import type { BlobReader } from '../io/blob-reader.ts';
import { openFileReader } from '../io/file-reader.ts';
import { openTarPayload } from '../formats/tar/wrapper.ts';
import { ZFileReader, isZFile } from '../formats/zfile/reader.ts';
import { openRoLayer } from '../formats/lsmt/ro-layer.ts';
import type { RoLayer } from '../formats/lsmt/ro-layer.ts';
import { MergedIndex } from '../formats/lsmt/merged-index.ts';
import type { FuseExtentSource, FuseExtentTable } from '../fuse/serve-fuse-fd.ts';

/** Layers a table can name (its `source` is a byte). */
const MAX_SOURCES = 255;

async function describe(file: string, index: number): Promise<{ layer: RoLayer; source: FuseExtentSource }> {
  const raw = await openFileReader(file);
  let reader: BlobReader = raw;
  try {
    const payload = await openTarPayload(raw);
    const inner = payload ?? raw;
    const source: FuseExtentSource = { path: file, fileSize: raw.size, base: payload?.start ?? 0 };
    reader = inner;
    if (await isZFile(inner)) {
      const z = await ZFileReader.open(inner, { name: `layer ${index} (${file})` });
      reader = z;
      const n = z.blockCount;
      const starts = new Float64Array(n + 1);
      for (let i = 0; i < n; i++) starts[i] = z.blockExtent(i).offset;
      starts[n] = n === 0 ? 0 : z.blockExtent(n - 1).offset + z.blockExtent(n - 1).length;
      const { algorithm, blockSize, verify } = z.info;
      source.zfile = { algorithm, blockSize, verify, size: z.size, starts };
    }
    const layer = await openRoLayer(reader, { what: `layer ${index} (${file})` });
    return { layer, source };
  } catch (e) {
    await reader.close().catch(() => {});
    await raw.close().catch(() => {});
    throw e;
  }
}

/** The extent table of the stack of `lowers` (layer blob files, bottom first). */
export async function extentTableFor(lowers: readonly string[]): Promise<FuseExtentTable> {
  if (lowers.length > MAX_SOURCES) throw new RangeError(`Cannot flatten ${lowers.length} layers: at most ${MAX_SOURCES}`);
  const layers: RoLayer[] = [];
  const sources: FuseExtentSource[] = [];
  try {
    for (const [i, file] of lowers.entries()) {
      const { layer, source } = await describe(file, i);
      layers.push(layer);
      sources.push(source);
    }
    const index = MergedIndex.build(layers.map((l) => l.segments));
    // Merged tags count from the top (0 = the last of `lowers`).
    return {
      offset: index.offset.slice(0, index.count),
      length: index.length.slice(0, index.count),
      moffset: index.moffset.slice(0, index.count),
      zeroed: index.zeroed.slice(0, index.count),
      source: index.tag.slice(0, index.count),
      sources: sources.reverse(),
    };
  } finally {
    await Promise.all(layers.map((l) => l.close().catch(() => {})));
  }
}
