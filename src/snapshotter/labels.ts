/**
 * Snapshot label keys the overlaybd snapshotter reads and writes (snapshotter.md §4).
 * Layer annotations with the `containerd.io/snapshot/` prefix reach the snapshotter as
 * labels of the pull-time Prepare (image-format.md §3).
 *
 * @example
 * ```ts
 * const remote = labels[LABELS.targetRef] !== undefined && labels[LABELS.blobDigest] !== undefined;
 * ```
 */
export const LABELS = {
  /** Set by containerd on a pull-time Prepare: the chain ID the layer will be committed as. */
  targetRef: 'containerd.io/snapshot.ref',
  /** Image reference, set per layer by `ctr rpull`. */
  imageRef: 'containerd.io/snapshot/image-ref',
  /** Image reference, set by the CRI plugin (`disable_snapshot_annotations = false`). */
  criImageRef: 'containerd.io/snapshot/cri.image-ref',
  blobDigest: 'containerd.io/snapshot/overlaybd/blob-digest',
  blobSize: 'containerd.io/snapshot/overlaybd/blob-size',
  /** `fstype[;mountopts[;mkfsopts]]`. */
  fsType: 'containerd.io/snapshot/overlaybd/blob-fs-type',
  accelerationLayer: 'containerd.io/snapshot/overlaybd/acceleration-layer',
  turboOciTargetDigest: 'containerd.io/snapshot/overlaybd/turbo-oci/target-digest',
  turboOciTargetMediaType: 'containerd.io/snapshot/overlaybd/turbo-oci/target-media-type',
  fastOciTargetDigest: 'containerd.io/snapshot/overlaybd/fastoci/target-digest',
  fastOciTargetMediaType: 'containerd.io/snapshot/overlaybd/fastoci/target-media-type',
  /** `download`: fetch the whole blob instead of reading on demand. */
  downloadRemoteBlob: 'containerd.io/snapshot/overlaybd/download-remote-blob',
  recordTrace: 'containerd.io/snapshot/overlaybd/record-trace',
  recordTracePath: 'containerd.io/snapshot/overlaybd/record-trace-path',
  /** Size in GiB of a parentless writable device (default 64). */
  vsize: 'containerd.io/snapshot/overlaybd/vsize',
  /** `dir` or `dev`: per-snapshot rootfs mode; anything else means overlayfs. */
  writable: 'containerd.io/snapshot/overlaybd.writable',
  convertToTurboOci: 'containerd.io/snapshot/overlaybd/convert2turbo-oci',
  /** `image`: treat a Prepare as an image layer, not a container rootfs. */
  snapshotType: 'containerd.io/snapshot/type',
  diskQuota: 'containerd.io/snapshot/disk_quota',
  /** Directory holding writable_data/writable_index instead of `<sn>/block`. */
  activePath: 'containerd.io/snapshot/overlay.active.path',
  /** Written on remote layers committed during Prepare. */
  remote: 'containerd.io/snapshot/remote',
  /** Written on committed local-block snapshots. */
  localCommitPath: 'containerd.io/snapshot/overlaybd.localcommitpath',
} as const;

/** Value of {@link LABELS.remote}. */
export const REMOTE_LABEL_VALUE = 'remote snapshot';

/** containerd's limit on the combined size of one label key and value, in bytes. */
export const MAX_LABEL_SIZE = 4096;
