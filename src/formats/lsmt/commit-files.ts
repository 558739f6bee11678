/**
 * `overlaybd-commit` on files: a writable layer (or a sealed file) compacted into a new
 * blob, optionally as a ZFile and tar-wrapped, streamed in one pass.
 */
import { openFileReader } from '../../io/file-reader.ts';
import { writeLayerFile, type LayerSinkOptions } from '../layer-files.ts';
import { openLayerBlob } from '../open-layer-blob.ts';
import { commitSealedLayer, commitWritableLayer } from './commit.ts';
import { openRoLayer } from './ro-layer.ts';
import { openWritableLayer } from './writable-layer.ts';

export interface CommitFileOptions extends LayerSinkOptions {
  overwrite?: boolean;
  userTag?: Uint8Array;
  /** Ignored unless a valid UUID. */
  uuid?: string | undefined;
  /** Replaces the layer's parent UUID when valid. */
  parentUuid?: string | undefined;
}

function commitHeader(o: CommitFileOptions): { uuid?: string; parentUuid?: string; userTag?: Uint8Array } {
  return {
    ...(o.uuid !== undefined ? { uuid: o.uuid } : {}),
    ...(o.parentUuid !== undefined ? { parentUuid: o.parentUuid } : {}),
    ...(o.userTag !== undefined ? { userTag: o.userTag } : {}),
  };
}

/** Commits the writable layer `DATA`+`INDEX` into `out`. */
export async function commitFile(layer: { data: string; index: string }, out: string, options: CommitFileOptions): Promise<void> {
  const rw = await openWritableLayer({ ...layer, readOnly: true });
  try {
    await writeLayerFile(out, options, (sink) => commitWritableLayer(rw, sink, commitHeader(options)));
  } finally {
    await rw.close();
  }
}

/** `--commit_sealed`: compacts a sealed (or committed) file into `out`. */
export async function commitSealedFile(sealed: string, out: string, options: CommitFileOptions): Promise<void> {
  const { reader } = await openLayerBlob(await openFileReader(sealed));
  try {
    const ro = await openRoLayer(reader, { what: sealed });
    await writeLayerFile(out, options, (sink) => commitSealedLayer(ro, sink, commitHeader(options)));
  } finally {
    await reader.close();
  }
}
