/**
 * The snapshotter behind `createSnapshotter`: containerd's overlayfs snapshotter for
 * plain layers, plus upstream overlaybd-snapshotter's handling of overlaybd layers
 * (snapshotter.md §5–§8). Layout: `<root>/metadata.db`, `<root>/snapshots/<id>/` with
 * `fs/` (layer contents or overlay upper), `work/` (overlay workdir, active only) and
 * `block/` (`config.v1.json`, `init-debug.log`, `mountpoint/`, writable layer files).
 *
 * Every operation runs in one metadata transaction; file-system steps happen inside it,
 * so a failure rolls the record back and removes the half-made directory.
 */
import { chown, lstat, mkdir, mkdtemp, readdir, readFile, realpath, rename, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { debuglog } from 'node:util';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnsupportedError } from '../io/errors.ts';
import type { DeviceConfig } from '../image/device-config.ts';
import { readDeviceConfig } from '../image/device-config.ts';
import { createWritableLayer } from '../formats/lsmt/writable-layer.ts';
import { sealInPlace } from '../formats/lsmt/seal.ts';
import type { MirrorRegistry, RwMode, WritableLayerType } from './config.ts';
import type { DeviceMounter } from './device-mounter.ts';
import { parseFilters } from './filters.ts';
import { LABELS, REMOTE_LABEL_VALUE } from './labels.ts';
import { Metastore, validateLabels, type MetaTransaction, type SnapshotRecord } from './metastore.ts';
import type { Info, Kind, Mount, SnapshotOptions, Snapshotter, SnapshotterOptions, Usage, WalkFunction } from './snapshotter.ts';
import { classifyStorage, exists, imageRefOf, turboOciTarget, writableDir, type StorageType } from './_storage.ts';
import { emptyConfig, lower, repoBlobUrl, writeConfigAtomic } from './_block-config.ts';
import { diskUsage } from './_disk-usage.ts';
import { parseFsSpec } from '../attach/filesystem.ts';
import { isMountPoint, mountsUnder, overlayUses } from './_mountinfo.ts';
import { Mutex } from './_mutex.ts';

const log = debuglog('obd');

const GZIP_MEDIA_TYPES = new Set(['application/vnd.oci.image.layer.v1.tar+gzip', 'application/vnd.docker.image.rootfs.diff.tar.gzip']);
const DEFAULT_VSIZE_GB = 64;

interface Resolved {
  rwMode: RwMode;
  writableLayerType: WritableLayerType;
  autoRemoveDev: boolean;
  asyncRemove: boolean;
  mirrorRegistry: MirrorRegistry[];
  defaultFsType: string;
  turboFsType: string[];
  indexOff: boolean;
  attachOnPull: boolean;
}

/** What the Prepare transaction produced. */
type PrepareResult = { mounts: Mount[] } | { committedAs: string };

/** The snapshot a request is about, with its parent. */
interface Subject {
  s: SnapshotRecord;
  key: string;
  labels: Record<string, string>;
  parent?: { id: string; name: string; labels: Record<string, string> };
}

/** containerd's overlayfs snapshotter plus upstream's overlaybd logic; construct with {@link OverlaybdSnapshotter.open}. */
export class OverlaybdSnapshotter implements Snapshotter {
  readonly #root: string;
  readonly #ms: Metastore;
  readonly #o: Resolved;
  readonly #mounter: DeviceMounter | undefined;
  /** Serialises the device mounter's mount/unmount/attach/detach calls (its contract). */
  readonly #deviceLock = new Mutex();
  /** Attaches at pull in flight, by snapshot ID; they never reject (errors are logged). */
  readonly #attaching = new Map<string, Promise<void>>();

  private constructor(init: { root: string; ms: Metastore; o: Resolved; mounter: DeviceMounter | undefined }) {
    this.#root = init.root;
    this.#ms = init.ms;
    this.#o = init.o;
    this.#mounter = init.mounter;
  }

  static async open(root: string, options: SnapshotterOptions): Promise<OverlaybdSnapshotter> {
    if (root === '') throw new InvalidArgumentError('Cannot open snapshotter: root is empty');
    await mkdir(root, { recursive: true, mode: 0o700 });
    const real = await realpath(root);
    await mkdir(join(real, 'snapshots'), { recursive: true, mode: 0o700 });
    const ms = Metastore.open(join(real, 'metadata.db'));
    return new OverlaybdSnapshotter({
      root: real,
      ms,
      o: {
        rwMode: options.rwMode ?? 'overlayfs',
        writableLayerType: options.writableLayerType ?? 'append',
        autoRemoveDev: options.autoRemoveDev ?? false,
        asyncRemove: options.asyncRemove ?? false,
        mirrorRegistry: options.mirrorRegistry ?? [],
        defaultFsType: options.defaultFsType ?? 'ext4',
        turboFsType: options.turboFsType ?? ['erofs', 'ext4'],
        indexOff: options.indexOff ?? existsSync('/sys/module/overlay/parameters/index'),
        attachOnPull: options.attachOnPull ?? true,
      },
      mounter: options.deviceMounter,
    });
  }

  // ---- paths -------------------------------------------------------------------------

  #dir(id: string): string {
    return join(this.#root, 'snapshots', id);
  }
  #fs(id: string): string {
    return join(this.#dir(id), 'fs');
  }
  #work(id: string): string {
    return join(this.#dir(id), 'work');
  }
  #mountpoint(id: string): string {
    return join(this.#dir(id), 'block', 'mountpoint');
  }
  #config(id: string): string {
    return join(this.#dir(id), 'block', 'config.v1.json');
  }
  #mark(id: string): string {
    return join(this.#dir(id), 'block', 'backstore_mark');
  }

  // ---- containerd API ----------------------------------------------------------------

  stat(key: string): Promise<Info> {
    return this.#ms.withTransaction((tx) => tx.getInfo(key).info);
  }

  update(info: Info, fieldpaths: string[] = []): Promise<Info> {
    return this.#ms.withTransaction((tx) => tx.updateInfo(info, fieldpaths), { writable: true });
  }

  usage(key: string): Promise<Usage> {
    return this.#ms.withTransaction(async (tx) => {
      const { id, info, usage } = tx.getInfo(key);
      return info.kind === 'active' ? diskUsage(this.#fs(id)) : usage;
    });
  }

  mounts(key: string): Promise<Mount[]> {
    return this.#ms.withTransaction(async (tx) => this.#remount(tx, key));
  }

  prepare(key: string, parent: string, options: SnapshotOptions = {}): Promise<Mount[]> {
    return this.#create('active', { key, parent, labels: options.labels ?? {} });
  }

  view(key: string, parent: string, options: SnapshotOptions = {}): Promise<Mount[]> {
    return this.#create('view', { key, parent, labels: options.labels ?? {} });
  }

  async commit(name: string, key: string, options: SnapshotOptions = {}): Promise<void> {
    const pulled = await this.#ms.withTransaction((tx) => this.#commit(tx, { name, key, labels: options.labels ?? {} }), { writable: true });
    if (pulled !== undefined) this.#attachOnPull(pulled.id, pulled.labels);
  }

  async remove(key: string): Promise<void> {
    const removals = await this.#ms.withTransaction((tx) => this.#remove(tx, key), { writable: true });
    await this.#removeDirs(removals);
  }

  async walk(fn: WalkFunction, filters: string[] = []): Promise<void> {
    const match = parseFilters(filters);
    // Collect inside the transaction, call back outside it: fn may call stat().
    const infos = await this.#ms.withTransaction((tx) => tx.list().filter(match));
    for (const info of infos) await fn(info);
  }

  async cleanup(): Promise<void> {
    const removals = await this.#ms.withTransaction((tx) => this.#orphans(tx));
    await this.#removeDirs(removals);
  }

  async close(): Promise<void> {
    await Promise.all(this.#attaching.values());
    await this.#ms.close();
  }

  // ---- Prepare / View (§5.1) ---------------------------------------------------------

  async #create(kind: Kind, req: { key: string; parent: string; labels: Record<string, string> }): Promise<Mount[]> {
    validateLabels(req.labels);
    const result = await this.#ms.withTransaction(async (tx): Promise<PrepareResult> => {
      let temp: string | undefined = await mkdtemp(join(this.#root, 'snapshots', 'new-'));
      let final: string | undefined;
      try {
        await mkdir(join(temp, 'fs'), { mode: 0o755 });
        if (kind === 'active') await mkdir(join(temp, 'work'), { mode: 0o711 });
        await mkdir(join(temp, 'block', 'mountpoint'), { recursive: true, mode: 0o711 });
        await writeFile(join(temp, 'block', 'init-debug.log'), '', { mode: 0o644 });
        const s = tx.createSnapshot({ kind, key: req.key, parent: req.parent, labels: req.labels });
        const parentId = s.parentIds[0];
        if (parentId !== undefined) {
          const st = await stat(this.#fs(parentId));
          await chown(join(temp, 'fs'), st.uid, st.gid);
        }
        final = this.#dir(s.id);
        // IDs of rolled-back transactions are handed out again: clear a leftover.
        await this.#removeDirs([final]);
        await rename(temp, final);
        temp = undefined;
        const imageRef = req.labels[LABELS.criImageRef] ?? req.labels[LABELS.imageRef];
        if (imageRef !== undefined) await writeFile(join(final, 'image_ref'), imageRef, { mode: 0o644 });
        const parent = parentId === undefined ? undefined : { id: parentId, name: req.parent, labels: tx.getInfo(req.parent).info.labels };
        return await this.#afterCreate(tx, { s, key: req.key, labels: req.labels, ...(parent === undefined ? {} : { parent }) });
      } catch (e) {
        if (temp !== undefined) await rm(temp, { recursive: true, force: true });
        if (final !== undefined) await this.#removeDirs([final]);
        throw e;
      }
    }, { writable: true });
    if ('committedAs' in result) {
      throw new AlreadyExistsError(`Cannot prepare snapshot ${req.key}: target snapshot ${JSON.stringify(result.committedAs)} already exists (remote overlaybd layer)`);
    }
    return result.mounts;
  }

  async #afterCreate(tx: MetaTransaction, sub: Subject): Promise<PrepareResult> {
    const { s, labels } = sub;
    const targetRef = labels[LABELS.targetRef];
    if (targetRef !== undefined) {
      // Pull path (§5.1 step 2).
      if (labels[LABELS.accelerationLayer] === 'yes') {
        const cfg = sub.parent !== undefined && (await exists(this.#config(sub.parent.id))) ? await this.#readConfig(sub.parent.id) : emptyConfig('');
        cfg.lowers.push(lower({ dir: this.#fs(s.id) }));
        cfg.resultFile = this.#resultFile(s.id);
        await writeConfigAtomic(this.#config(s.id), cfg);
        return { mounts: [{ type: 'bind', source: this.#fs(s.id), options: ['rw', 'bind'] }] };
      }
      const storage = await classifyStorage(this.#dir(s.id), labels);
      if (labels[LABELS.downloadRemoteBlob] === 'download' && storage === 'remote-block') {
        await writeConfigAtomic(this.#config(s.id), await this.#buildConfig(sub, 'remote-block'));
        return { mounts: [{ type: 'bind', source: this.#fs(s.id), options: ['rw', 'bind'] }] };
      }
      if (turboOciTarget(labels) === undefined && storage === 'remote-block') {
        const committed = { ...labels, [LABELS.remote]: REMOTE_LABEL_VALUE };
        tx.commitActive({ key: sub.key, name: targetRef, usage: await diskUsage(this.#fs(s.id)), labels: committed });
        await writeConfigAtomic(this.#config(s.id), await this.#buildConfig({ ...sub, labels: committed }, 'remote-block'));
        log('snapshotter: remote layer %s committed as %s (snapshot %s)', labels[LABELS.blobDigest], targetRef, s.id);
        return { committedAs: targetRef };
      }
      return { mounts: this.#normalMounts(s) };
    }
    if (labels[LABELS.snapshotType] === 'image') return { mounts: this.#normalMounts(s) };
    if (labels[LABELS.diskQuota] !== undefined && labels[LABELS.diskQuota] !== '') {
      throw new UnsupportedError(`Cannot prepare snapshot ${sub.key}: rootfs disk quotas (${LABELS.diskQuota}) are not supported`);
    }

    // Rootfs path (§5.1 step 5).
    const writeType = await this.#writeType(sub);
    let storage: StorageType = 'normal';
    if (writeType !== 'overlayfs') {
      storage = 'local-block';
      await writeConfigAtomic(this.#config(s.id), await this.#buildConfig(sub, 'normal', true));
    } else if (sub.parent !== undefined) {
      storage = await classifyStorage(this.#dir(sub.parent.id), sub.parent.labels);
    }
    if (storage === 'normal') {
      if (labels[LABELS.writable] !== undefined) {
        const rest = { ...labels };
        delete rest[LABELS.writable];
        tx.updateInfo({ name: sub.key, labels: rest }, ['labels']);
      }
      return { mounts: this.#normalMounts(s) };
    }
    const writable = writeType !== 'overlayfs';
    if (sub.parent !== undefined) await this.#updateTrace(sub, writable);
    const attachedNow = await this.#attach(sub, writeType);
    try {
      return { mounts: await this.#blockMounts(sub, writeType) };
    } catch (e) {
      if (attachedNow) await this.#detach(writable ? s.id : (sub.parent?.id ?? s.id), writeType).catch(() => undefined);
      throw e;
    }
  }

  /** §7: the parent is not an overlaybd image → overlayfs; else the label, else rwMode. */
  async #writeType(sub: Pick<Subject, 'labels' | 'parent'>): Promise<RwMode> {
    if (sub.parent !== undefined && !(await exists(this.#config(sub.parent.id)))) return 'overlayfs';
    const label = sub.labels[LABELS.writable];
    if (label !== undefined) return label === 'dir' || label === 'dev' ? label : 'overlayfs';
    return this.#o.rwMode;
  }

  // ---- device configs (§8, §11) ------------------------------------------------------

  #resultFile(id: string): string {
    return join(this.#dir(id), 'block', 'init-debug.log');
  }

  async #readConfig(id: string): Promise<DeviceConfig> {
    try {
      return await readDeviceConfig(this.#config(id));
    } catch (e) {
      if (e instanceof NotFoundError) {
        throw new FailedPreconditionError(`Cannot build the device config on top of snapshot ${id}: it has no device config (not an overlaybd layer)`, { cause: e });
      }
      throw e;
    }
  }

  /** §8.2: the device config of `sub.s` for storage type `storage`. */
  async #buildConfig(sub: Pick<Subject, 's' | 'labels' | 'parent' | 'key'>, storage: StorageType, writable = false): Promise<DeviceConfig> {
    const id = sub.s.id;
    const cfg = emptyConfig(this.#resultFile(id));
    if (sub.parent !== undefined) {
      const p = await this.#readConfig(sub.parent.id);
      cfg.repoBlobUrl = p.repoBlobUrl;
      cfg.lowers = p.lowers;
    }
    if (writable && storage !== 'normal') {
      throw new FailedPreconditionError(`Cannot make snapshot ${sub.key} writable: it is itself an overlaybd layer`);
    }
    const turbo = turboOciTarget(sub.labels);
    switch (storage) {
      case 'remote-block': {
        const ref = imageRefOf(sub.labels);
        if (ref === undefined) throw new InvalidArgumentError(`Cannot build the device config of snapshot ${sub.key}: no image reference label`);
        cfg.repoBlobUrl = repoBlobUrl(ref, this.#o.mirrorRegistry);
        if (turbo === undefined) {
          const size = Number(sub.labels[LABELS.blobSize]);
          if (!Number.isSafeInteger(size) || size < 0) {
            throw new InvalidArgumentError(`Cannot build the device config of snapshot ${sub.key}: ${LABELS.blobSize} ${JSON.stringify(sub.labels[LABELS.blobSize])} is not an integer`);
          }
          cfg.lowers.push(lower({ digest: sub.labels[LABELS.blobDigest] ?? '', size, dir: this.#fs(id) }));
        } else {
          const bottom = cfg.lowers[0]?.file ?? '';
          const meta = sub.parent !== undefined && bottom !== '' ? join(this.#fs(id), basename(bottom)) : await this.#turboMeta(id);
          cfg.lowers.push(
            lower({
              dir: this.#fs(id),
              file: meta,
              targetDigest: turbo.digest,
              gzipIndex: GZIP_MEDIA_TYPES.has(turbo.mediaType) ? join(this.#fs(id), 'gzip.meta') : '',
            }),
          );
          if (cfg.lowers[0]?.file !== '' && (await exists(join(this.#root, '.TurboOCI_ext4')))) {
            for (const l of cfg.lowers) if (l.file !== '') l.file = join(l.file.slice(0, l.file.length - basename(l.file).length), 'ext4.fs.meta');
          }
        }
        break;
      }
      case 'local-block':
        if (await exists(join(this.#dir(id), 'layer.tar'))) {
          cfg.lowers.push(lower({ targetFile: join(this.#dir(id), 'layer.tar'), file: join(this.#fs(id), 'overlaybd.commit') }));
        } else {
          cfg.lowers.push(lower({ dir: this.#fs(id) }));
        }
        break;
      case 'local-layer':
        throw new UnsupportedError(`Cannot commit snapshot ${sub.key}: converting layer.tar to TurboOCI (turboOCI-apply) is not supported`);
      case 'normal': {
        if (!writable) throw new FailedPreconditionError(`Cannot build the device config of snapshot ${sub.key}: it is a plain directory layer`);
        const dir = writableDir(this.#dir(id), sub.labels);
        const data = join(dir, 'writable_data');
        const index = join(dir, 'writable_index');
        if (!((await exists(data)) && (await exists(index)))) {
          let vsize = 0;
          if (sub.parent === undefined) {
            const v = Number(sub.labels[LABELS.vsize]);
            vsize = Number.isSafeInteger(v) && v > 0 ? v : DEFAULT_VSIZE_GB;
          }
          await mkdir(dir, { recursive: true, mode: 0o711 });
          const layer = await createWritableLayer({ data, index, virtualSize: vsize * 2 ** 30, sparse: this.#o.writableLayerType === 'sparse' });
          await layer.close();
        }
        cfg.upper = { index, data, target: '', gzipIndex: '' };
        break;
      }
    }
    return cfg;
  }

  /** §11.1: the TurboOCI meta file of snapshot `id`. */
  async #turboMeta(id: string): Promise<string> {
    let erofs: boolean | undefined;
    for (const t of this.#o.turboFsType) {
      const f = join(this.#fs(id), `${t}.fs.meta`);
      if (!(await exists(f))) continue;
      if (t === 'erofs') {
        erofs ??= (await readFile('/proc/filesystems', 'utf8').catch(() => '')).split('\n').some((l) => l.trim().endsWith('erofs'));
        if (!erofs) continue;
      }
      return f;
    }
    return join(this.#fs(id), 'ext4.fs.meta');
  }

  /** §11.2: trace recording / acceleration layer fields of the image top layer's config (and the own one when writable). */
  async #updateTrace(sub: Subject, writable: boolean): Promise<void> {
    const parent = sub.parent!;
    let accel = false;
    let tracePath = '';
    if (parent.labels[LABELS.accelerationLayer] === 'yes') accel = true;
    else if (sub.labels[LABELS.recordTrace] === 'yes' && (sub.labels[LABELS.recordTracePath] ?? '') !== '') tracePath = sub.labels[LABELS.recordTracePath] ?? '';
    const ids = writable && (accel || tracePath !== '') ? [parent.id, sub.s.id] : [parent.id];
    for (const id of ids) {
      const cfg = await this.#readConfig(id);
      if (cfg.accelerationLayer === accel && cfg.recordTracePath === tracePath) continue;
      cfg.accelerationLayer = accel;
      cfg.recordTracePath = tracePath;
      await writeConfigAtomic(this.#config(id), cfg);
    }
  }

  // ---- devices (§9, §10) -------------------------------------------------------------

  #requireMounter(action: string): DeviceMounter {
    if (this.#mounter === undefined) throw new UnsupportedError(`Cannot ${action}: no device mounter is configured`);
    return this.#mounter;
  }

  /** fs-type string of the device owned by `owner` (its label, TurboOCI meta type, or the default). */
  async #fsTypeOf(ownerId: string, labels: Record<string, string>, fallback?: Record<string, string>): Promise<string> {
    const label = labels[LABELS.fsType] ?? fallback?.[LABELS.fsType];
    if (label !== undefined && label !== '') return label;
    if (turboOciTarget(labels) !== undefined) return basename(await this.#turboMeta(ownerId)).replace(/\.fs\.meta$/, '');
    return this.#o.defaultFsType;
  }

  /**
   * Attaches (and mounts, except in dev mode) the device owning a block-backed rootfs;
   * true when this call did it. `mkfs` only on the Prepare of a parentless writable device.
   */
  async #attach(sub: Subject, writeType: RwMode, allowMkfs = true): Promise<boolean> {
    const writable = writeType !== 'overlayfs';
    const ownerId = writable ? sub.s.id : sub.parent!.id;
    const ownerLabels = writable ? sub.labels : sub.parent!.labels;
    const action = `attach the overlaybd device of snapshot ${sub.key}`;
    await this.#attachedAtPull(ownerId);
    if (writeType === 'dev') {
      const mounter = this.#requireMounter(action);
      if (mounter.attach === undefined) throw new UnsupportedError(`Cannot ${action}: the device mounter cannot attach without mounting (dev mode)`);
      if (await exists(this.#mark(ownerId))) return false;
      const attach = mounter.attach.bind(mounter);
      const dev = await this.#deviceLock.run(() => attach(this.#config(ownerId), { writable: true }));
      await writeFile(this.#mark(ownerId), dev, { mode: 0o644 });
      return true;
    }
    const mountpoint = this.#mountpoint(ownerId);
    const mounter = this.#requireMounter(action);
    if (await mounter.isMounted(mountpoint)) return false;
    const fs = parseFsSpec(await this.#fsTypeOf(ownerId, ownerLabels, sub.parent?.labels));
    await this.#deviceLock.run(() => mounter.mount(this.#config(ownerId), mountpoint, { ...fs, writable, mkfs: allowMkfs && writable && sub.parent === undefined }));
    log('snapshotter: mounted device of snapshot %s at %s (%s, %s)', ownerId, mountpoint, fs.fstype, writable ? 'rw' : 'ro');
    return true;
  }

  /** Unmounts/detaches the device of snapshot `id` (own device in dir/dev mode, image device otherwise). */
  async #detach(id: string, writeType: RwMode): Promise<void> {
    const mounter = this.#mounter;
    if (mounter === undefined) return;
    await this.#attachedAtPull(id);
    if (writeType === 'dev' || (await exists(this.#mark(id)))) {
      if (await exists(this.#mark(id))) {
        await this.#deviceLock.run(async () => mounter.detach?.(this.#config(id)));
        await rm(this.#mark(id), { force: true });
      }
      return;
    }
    if (await mounter.isMounted(this.#mountpoint(id))) await this.#deviceLock.run(() => mounter.unmount(this.#mountpoint(id)));
  }

  /**
   * Attach at pull (README.md "Attach at pull"): starts mounting the device of the
   * acceleration layer `id` read-only, as the rootfs Prepare of an overlayfs-mode
   * container would (`accelerationLayer` set in its config, §11.2), without delaying the
   * Commit reply. A failure is logged; the next Prepare or Mounts attaches as usual.
   */
  #attachOnPull(id: string, labels: Record<string, string>): void {
    const mounter = this.#mounter;
    if (mounter === undefined || this.#attaching.has(id)) return;
    const mountpoint = this.#mountpoint(id);
    const job = (async () => {
      if (await mounter.isMounted(mountpoint)) return;
      const cfg = await this.#readConfig(id);
      if (!cfg.accelerationLayer || cfg.recordTracePath !== '') {
        cfg.accelerationLayer = true;
        cfg.recordTracePath = '';
        await writeConfigAtomic(this.#config(id), cfg);
      }
      const fs = parseFsSpec(await this.#fsTypeOf(id, labels));
      await this.#deviceLock.run(() => mounter.mount(this.#config(id), mountpoint, { ...fs, writable: false, mkfs: false }));
      log('snapshotter: attached device of acceleration layer snapshot %s at pull (%s)', id, mountpoint);
    })()
      .catch((e: unknown) => log('snapshotter: cannot attach the device of snapshot %s at pull (the next Prepare attaches it): %s', id, e instanceof Error ? e.message : String(e)))
      .finally(() => this.#attaching.delete(id));
    this.#attaching.set(id, job);
  }

  /** Waits for an attach at pull of snapshot `id` in flight, if any. */
  async #attachedAtPull(id: string): Promise<void> {
    await this.#attaching.get(id);
  }

  // ---- mounts (§6) -------------------------------------------------------------------

  #normalMounts(s: SnapshotRecord): Mount[] {
    const [first] = s.parentIds;
    if (first === undefined) {
      return [{ type: 'bind', source: this.#fs(s.id), options: [s.kind === 'view' ? 'ro' : 'rw', 'rbind'] }];
    }
    const options: string[] = this.#o.indexOff ? ['index=off'] : [];
    if (s.kind === 'active') options.push(`workdir=${this.#work(s.id)}`, `upperdir=${this.#fs(s.id)}`);
    else if (s.parentIds.length === 1) return [{ type: 'bind', source: this.#fs(first), options: ['ro', 'rbind'] }];
    options.push(`lowerdir=${s.parentIds.map((p) => this.#fs(p)).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', options }];
  }

  async #blockMounts(sub: Pick<Subject, 's' | 'parent' | 'labels'>, writeType: RwMode): Promise<Mount[]> {
    const { s } = sub;
    const ro = s.kind === 'view' ? 'ro' : 'rw';
    if (writeType === 'dir') return [{ type: 'bind', source: this.#mountpoint(s.id), options: [ro, 'rbind'] }];
    if (writeType === 'dev') {
      const dev = (await readFile(this.#mark(s.id), 'utf8')).trim();
      const fs = parseFsSpec(await this.#fsTypeOf(s.id, sub.labels, sub.parent?.labels));
      return [{ type: fs.fstype, source: dev, options: [ro, ...fs.mountOptions] }];
    }
    if (sub.parent === undefined) return [{ type: 'bind', source: this.#mountpoint(s.id), options: ['ro', 'rbind'] }];
    if (s.kind === 'view') return [{ type: 'bind', source: this.#mountpoint(sub.parent.id), options: ['ro', 'rbind'] }];
    const options = this.#o.indexOff ? ['index=off'] : [];
    options.push(`workdir=${this.#work(s.id)}`, `upperdir=${this.#fs(s.id)}`, `lowerdir=${this.#mountpoint(sub.parent.id)}`);
    return [{ type: 'overlay', source: 'overlay', options }];
  }

  /** Mounts(key) (§6): recomputes mounts, re-attaching devices when needed. */
  async #remount(tx: MetaTransaction, key: string): Promise<Mount[]> {
    const s = tx.getSnapshot(key);
    const { info } = tx.getInfo(key);
    const parentId = s.parentIds[0];
    const parent = parentId === undefined ? undefined : { id: parentId, name: info.parent, labels: tx.getInfo(info.parent).info.labels };
    const sub: Subject = { s, key, labels: info.labels, ...(parent === undefined ? {} : { parent }) };
    if (info.labels[LABELS.targetRef] !== undefined) {
      // A layer being pulled: accel/download layers were handed out as rw binds.
      if (info.labels[LABELS.accelerationLayer] === 'yes' || (await exists(this.#config(s.id)))) {
        return [{ type: 'bind', source: this.#fs(s.id), options: ['rw', 'bind'] }];
      }
      return this.#normalMounts(s);
    }
    if (await exists(this.#config(s.id))) {
      const writeType = await this.#writeType(sub);
      if (writeType !== 'overlayfs') {
        // Re-attach after a restart or detach, never formatting the device again.
        await this.#attach(sub, writeType, false);
        return this.#blockMounts(sub, writeType);
      }
    }
    if (parent !== undefined && (await classifyStorage(this.#dir(parent.id), parent.labels)) !== 'normal') {
      await this.#attach(sub, 'overlayfs');
      return this.#blockMounts(sub, 'overlayfs');
    }
    return this.#normalMounts(s);
  }

  // ---- Commit (§5.2) -----------------------------------------------------------------

  /** Commits; returns the snapshot to attach at pull (an acceleration layer), if any. */
  async #commit(tx: MetaTransaction, req: { name: string; key: string; labels: Record<string, string> }): Promise<{ id: string; labels: Record<string, string> } | undefined> {
    const { id, info } = tx.getInfo(req.key);
    if (info.kind !== 'active') throw new FailedPreconditionError(`Cannot commit snapshot ${req.key}: it is ${info.kind}, not active`);
    validateLabels(req.labels);
    const labels = { ...req.labels };
    const parentId = tx.getSnapshot(req.key).parentIds[0];
    const parent = parentId === undefined ? undefined : { id: parentId, name: info.parent, labels: tx.getInfo(info.parent).info.labels };
    const sub = { s: { id, kind: info.kind, parentIds: parentId === undefined ? [] : [parentId] }, key: req.key, labels, ...(parent === undefined ? {} : { parent }) };

    let sealed = false;
    if (info.labels[LABELS.writable] !== undefined && info.labels[LABELS.accelerationLayer] !== 'yes' && (await exists(this.#config(id)))) {
      if (await isMountPoint(this.#mountpoint(id)).catch(() => false)) {
        if (await overlayUses(this.#mountpoint(id))) {
          throw new FailedPreconditionError(`Cannot commit snapshot ${req.key}: its device is still in use by an overlay mount`);
        }
      }
      await this.#detach(id, info.labels[LABELS.writable] === 'dev' ? 'dev' : 'dir');
      const block = join(this.#dir(id), 'block');
      await sealInPlace({ data: join(block, 'writable_data'), index: join(block, 'writable_index') });
      await rename(join(block, 'writable_data'), join(this.#fs(id), 'overlaybd.sealed'));
      await rm(join(block, 'writable_index'), { force: true });
      sealed = true;
    }
    // Classify with the commit's labels: they replace the active snapshot's.
    const storage = sealed ? 'local-block' : await classifyStorage(this.#dir(id), labels);
    let config: DeviceConfig | undefined;
    if (turboOciTarget(labels) !== undefined) {
      if (storage !== 'remote-block') {
        throw new FailedPreconditionError(`Cannot commit TurboOCI layer ${req.key}: no image reference label (pull with image-ref labels)`);
      }
      config = await this.#buildConfig(sub, 'remote-block');
    } else if (storage === 'local-layer') {
      config = await this.#buildConfig(sub, 'local-layer');
    } else if (storage === 'local-block') {
      config = await this.#buildConfig(sub, 'local-block');
      labels[LABELS.localCommitPath] = join(this.#fs(id), 'overlaybd.sealed');
      delete labels[LABELS.writable];
    }
    tx.commitActive({ key: req.key, name: req.name, usage: await diskUsage(this.#fs(id)), labels });
    if (config !== undefined) await writeConfigAtomic(this.#config(id), config);
    const accel = (labels[LABELS.accelerationLayer] ?? info.labels[LABELS.accelerationLayer]) === 'yes';
    if (accel && this.#o.attachOnPull && this.#o.rwMode === 'overlayfs' && this.#mounter !== undefined && (await exists(join(this.#fs(id), 'trace')))) {
      return { id, labels: { ...info.labels, ...labels } };
    }
    return undefined;
  }

  // ---- Remove (§5.3) and directory cleanup -------------------------------------------

  async #remove(tx: MetaTransaction, key: string): Promise<string[]> {
    const { id, info } = tx.getInfo(key);
    const parentId = info.parent === '' ? undefined : tx.getInfo(info.parent).id;
    tx.remove(key); // FailedPrecondition for a parent; rolled back if a later step fails
    const storage = await classifyStorage(this.#dir(id), info.labels);
    if (storage !== 'normal') {
      const mountpoint = this.#mountpoint(id);
      if (this.#mounter !== undefined && !(await overlayUses(mountpoint))) await this.#detach(id, 'overlayfs');
    }
    if (this.#o.autoRemoveDev && info.kind === 'active' && parentId !== undefined && this.#mounter !== undefined) {
      const parentLabels = tx.getInfo(info.parent).info.labels;
      const pm = this.#mountpoint(parentId);
      if ((await classifyStorage(this.#dir(parentId), parentLabels)) !== 'normal' && tx.childKeys(info.parent).length === 0 && !(await overlayUses(pm))) {
        await this.#detach(parentId, 'overlayfs');
      }
    }
    if (await isMountPoint(this.#mountpoint(id))) {
      throw new FailedPreconditionError(`Cannot remove snapshot ${key}: its device is still mounted at ${this.#mountpoint(id)}`);
    }
    return this.#o.asyncRemove ? [] : this.#orphans(tx);
  }

  /** Snapshot directories with no metadata record (containerd `getCleanupDirectories`). */
  async #orphans(tx: MetaTransaction): Promise<string[]> {
    const ids = tx.ids();
    const dir = join(this.#root, 'snapshots');
    return (await readdir(dir)).filter((name) => !ids.has(name)).map((name) => join(dir, name));
  }

  /** Deletes directories, skipping (and logging) any with a mount inside. */
  async #removeDirs(dirs: string[]): Promise<void> {
    for (const d of dirs) {
      try {
        await lstat(d);
      } catch {
        continue;
      }
      const mounted = await mountsUnder(d);
      if (mounted.length > 0) {
        log('snapshotter: not removing %s: mounts inside (%s)', d, mounted.join(', '));
        continue;
      }
      await rm(d, { recursive: true, force: true });
    }
  }
}
