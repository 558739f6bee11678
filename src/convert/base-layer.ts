/**
 * The prebuilt base layer of `--mkfs=false` conversions (image-format.md §4.3): upstream
 * ships an empty 64 GiB ext4 as the raw ZFile `/opt/overlaybd/baselayers/ext4_64`; the
 * native convertor wraps it in a plain ustar archive — one entry `overlaybd.commit`, mode
 * 0444, uid/gid 0, mtime 0, no owner names, two zero blocks — and prepends that blob to
 * the image. Wrapping upstream's file gives the blob upstream pushes
 * (`sha256:a8b5fca8…0e21`, 4739584 bytes).
 *
 * @example
 * ```ts
 * const blob = wrapBaseLayer(readFileSync('/opt/overlaybd/baselayers/ext4_64'));
 * ```
 */
import { buildTar } from './tar-writer.ts';

/** Where upstream installs the base layer. */
export const DEFAULT_BASE_LAYER = '/opt/overlaybd/baselayers/ext4_64';

/** The base layer file wrapped as upstream uploads it. */
export function wrapBaseLayer(file: Uint8Array): Uint8Array {
  return buildTar([{ path: 'overlaybd.commit', type: 'file', mode: 0o444, data: file }]);
}
