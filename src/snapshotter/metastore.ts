/**
 * The snapshot metadata store: one SQLite file (`<root>/metadata.db`) holding what
 * containerd's bbolt metastore holds — per snapshot a numeric ID (never reused), key or
 * name, kind, parent link, timestamps, labels and, once committed, its disk usage.
 *
 * Every access goes through {@link Metastore.withTransaction}: one connection, one
 * transaction at a time (a FIFO mutex), `BEGIN IMMEDIATE … COMMIT` for writers and
 * `ROLLBACK` when the callback throws, so a failed Prepare leaves no record. The
 * callback may await file-system work; nothing else touches the database meanwhile.
 *
 * The database is opened with an exclusive lock: a second process (or a second
 * `Metastore` on the same file) fails with FailedPreconditionError, as bbolt's file lock
 * makes upstream's second snapshotter fail.
 *
 * @example
 * ```ts
 * const ms = Metastore.open('/var/lib/obd/metadata.db');
 * const s = await ms.withTransaction((tx) => tx.createSnapshot({ kind: 'active', key: 'k', parent: '' }), { writable: true });
 * ms.close();
 * ```
 */
import Database from 'better-sqlite3';
import type { Database as DB, Statement } from 'better-sqlite3';
import { AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../io/errors.ts';
import { Mutex } from './_mutex.ts';
import { MAX_LABEL_SIZE } from './labels.ts';
import type { Info, Kind, Usage } from './snapshotter.ts';

/** An active snapshot or view as the snapshotter needs it (containerd `storage.Snapshot`). */
export interface SnapshotRecord {
  id: string;
  kind: Kind;
  /** IDs of the parent chain, nearest first. */
  parentIds: string[];
}

/** Options of {@link MetaTransaction.createSnapshot}. */
export interface CreateSnapshotOptions {
  kind: Kind;
  key: string;
  parent: string;
  labels?: Record<string, string>;
}

/** Options of {@link MetaTransaction.commitActive}. */
export interface CommitActiveOptions {
  key: string;
  name: string;
  usage: Usage;
  labels?: Record<string, string>;
}

/** Operations inside one transaction. */
export interface MetaTransaction {
  /** ID, info and stored usage of any snapshot. NotFound when missing. */
  getInfo(key: string): { id: string; info: Info; usage: Usage };
  /** The active snapshot or view `key`. NotFound; FailedPrecondition for a committed one. */
  getSnapshot(key: string): SnapshotRecord;
  createSnapshot(options: CreateSnapshotOptions): SnapshotRecord;
  /** Renames active `key` to committed `name`, keeping its ID; labels are replaced. Returns the ID. */
  commitActive(options: CommitActiveOptions): string;
  /** Removes `key`; FailedPrecondition when it has children. */
  remove(key: string): { id: string; kind: Kind };
  /** Updates labels (containerd `UpdateInfo` semantics). */
  updateInfo(info: Pick<Info, 'name' | 'labels'>, fieldpaths?: readonly string[]): Info;
  /** All snapshots in ID order. */
  list(): Info[];
  /** IDs of every snapshot. */
  ids(): Set<string>;
  /** Keys of active snapshots and views whose parent is `name`. */
  childKeys(name: string): string[];
  /** Key or name of the snapshot with this ID, if any. */
  keyOf(id: string): string | undefined;
}

interface Row {
  id: number;
  name: string;
  parent_id: number | null;
  kind: Kind;
  created_ms: number;
  updated_ms: number;
  labels: string;
  size: number;
  inodes: number;
}

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS snapshots (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  name       TEXT    NOT NULL UNIQUE,
  parent_id  INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
  kind       TEXT    NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  labels     TEXT    NOT NULL DEFAULT '{}',
  size       INTEGER NOT NULL DEFAULT 0,
  inodes     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
`;

/** Validates labels as containerd's `labels.Validate` does. */
export function validateLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== 'string') throw new InvalidArgumentError(`Cannot set label ${k}: value is not a string`);
    const size = Buffer.byteLength(k) + Buffer.byteLength(v);
    if (size > MAX_LABEL_SIZE) {
      throw new InvalidArgumentError(`Cannot set label ${k.slice(0, 100)}: key and value are ${size} bytes, at most ${MAX_LABEL_SIZE}`);
    }
  }
}

function parseLabels(text: string): Record<string, string> {
  return JSON.parse(text) as Record<string, string>;
}

class Statements {
  readonly byName: Statement<[string], Row>;
  readonly byId: Statement<[number], Row>;
  readonly insert: Statement<[string, number | null, Kind, number, number, string]>;
  readonly commit: Statement<[string, number, number, string, number, number, number]>;
  readonly remove: Statement<[number]>;
  readonly firstChild: Statement<[number], { id: number }>;
  readonly childKeys: Statement<[number], { name: string }>;
  readonly update: Statement<[number, string, number]>;
  readonly all: Statement<[], Row>;
  readonly ids: Statement<[], { id: number }>;

  constructor(db: DB) {
    this.byName = db.prepare('SELECT * FROM snapshots WHERE name = ?');
    this.byId = db.prepare('SELECT * FROM snapshots WHERE id = ?');
    this.insert = db.prepare('INSERT INTO snapshots (name, parent_id, kind, created_ms, updated_ms, labels) VALUES (?, ?, ?, ?, ?, ?)');
    this.commit = db.prepare(
      "UPDATE snapshots SET name = ?, kind = 'committed', created_ms = ?, updated_ms = ?, labels = ?, size = ?, inodes = ? WHERE id = ?",
    );
    this.remove = db.prepare('DELETE FROM snapshots WHERE id = ?');
    this.firstChild = db.prepare('SELECT id FROM snapshots WHERE parent_id = ? LIMIT 1');
    this.childKeys = db.prepare("SELECT name FROM snapshots WHERE parent_id = ? AND kind != 'committed' ORDER BY id");
    this.update = db.prepare('UPDATE snapshots SET updated_ms = ?, labels = ? WHERE id = ?');
    this.all = db.prepare('SELECT * FROM snapshots ORDER BY id');
    this.ids = db.prepare('SELECT id FROM snapshots');
  }
}

class Transaction implements MetaTransaction {
  readonly #s: Statements;
  readonly #writable: boolean;

  constructor(s: Statements, writable: boolean) {
    this.#s = s;
    this.#writable = writable;
  }

  #write(action: string): void {
    if (!this.#writable) throw new TypeError(`Cannot ${action} in a read-only transaction`);
  }

  #row(key: string, action: string): Row {
    const row = this.#s.byName.get(key);
    if (row === undefined) throw new NotFoundError(`Cannot ${action} snapshot ${key}: not found`);
    return row;
  }

  #info(row: Row): Info {
    const parent = row.parent_id === null ? undefined : this.#s.byId.get(row.parent_id);
    return {
      name: row.name,
      parent: parent?.name ?? '',
      kind: row.kind,
      created: new Date(row.created_ms),
      updated: new Date(row.updated_ms),
      labels: parseLabels(row.labels),
    };
  }

  #parentIds(row: Row): string[] {
    const out: string[] = [];
    let id = row.parent_id;
    while (id !== null) {
      const p = this.#s.byId.get(id);
      if (p === undefined) throw new NotFoundError(`Cannot read parents of snapshot ${row.name}: parent ${id} does not exist`);
      out.push(String(p.id));
      id = p.parent_id;
    }
    return out;
  }

  getInfo(key: string): { id: string; info: Info; usage: Usage } {
    const row = this.#row(key, 'stat');
    return { id: String(row.id), info: this.#info(row), usage: { size: row.size, inodes: row.inodes } };
  }

  getSnapshot(key: string): SnapshotRecord {
    const row = this.#row(key, 'get');
    if (row.kind !== 'active' && row.kind !== 'view') {
      throw new FailedPreconditionError(`Cannot get mounts of snapshot ${key}: it is ${row.kind}, not active or a view`);
    }
    return { id: String(row.id), kind: row.kind, parentIds: this.#parentIds(row) };
  }

  createSnapshot({ kind, key, parent, labels = {} }: CreateSnapshotOptions): SnapshotRecord {
    this.#write('create a snapshot');
    if (kind !== 'active' && kind !== 'view') {
      throw new InvalidArgumentError(`Cannot create snapshot ${key} of kind ${kind}: only active snapshots and views can be created`);
    }
    if (key === '') throw new InvalidArgumentError('Cannot create a snapshot with an empty key');
    validateLabels(labels);
    let parentRow: Row | undefined;
    if (parent !== '') {
      parentRow = this.#s.byName.get(parent);
      if (parentRow === undefined) throw new NotFoundError(`Cannot create snapshot ${key}: parent ${parent} does not exist`);
      if (parentRow.kind !== 'committed') {
        throw new InvalidArgumentError(`Cannot create snapshot ${key}: parent ${parent} is ${parentRow.kind}, not committed`);
      }
    }
    if (this.#s.byName.get(key) !== undefined) throw new AlreadyExistsError(`Cannot create snapshot ${key}: already exists`);
    const now = Date.now();
    const res = this.#s.insert.run(key, parentRow?.id ?? null, kind, now, now, JSON.stringify(labels));
    const row = this.#s.byId.get(Number(res.lastInsertRowid)) as Row;
    return { id: String(row.id), kind, parentIds: this.#parentIds(row) };
  }

  commitActive({ key, name, usage, labels = {} }: CommitActiveOptions): string {
    this.#write('commit a snapshot');
    validateLabels(labels);
    if (name === '') throw new InvalidArgumentError(`Cannot commit snapshot ${key}: empty name`);
    if (this.#s.byName.get(name) !== undefined) throw new AlreadyExistsError(`Cannot commit snapshot ${key} as ${name}: ${name} already exists`);
    const row = this.#row(key, 'commit');
    if (row.kind !== 'active') throw new FailedPreconditionError(`Cannot commit snapshot ${key}: it is ${row.kind}, not active`);
    const now = Date.now();
    this.#s.commit.run(name, now, now, JSON.stringify(labels), usage.size, usage.inodes, row.id);
    return String(row.id);
  }

  remove(key: string): { id: string; kind: Kind } {
    this.#write('remove a snapshot');
    const row = this.#row(key, 'remove');
    if (this.#s.firstChild.get(row.id) !== undefined) {
      throw new FailedPreconditionError(`Cannot remove snapshot ${key}: it is the parent of other snapshots`);
    }
    this.#s.remove.run(row.id);
    return { id: String(row.id), kind: row.kind };
  }

  updateInfo(info: Pick<Info, 'name' | 'labels'>, fieldpaths: readonly string[] = []): Info {
    this.#write('update a snapshot');
    const row = this.#row(info.name, 'update');
    let labels = parseLabels(row.labels);
    const given = info.labels ?? {};
    if (fieldpaths.length === 0) {
      labels = { ...given };
    } else {
      for (const path of fieldpaths) {
        if (path.startsWith('labels.')) {
          const k = path.slice('labels.'.length);
          const v = given[k];
          if (v === undefined) delete labels[k];
          else labels[k] = v;
        } else if (path === 'labels') {
          labels = { ...given };
        } else {
          throw new InvalidArgumentError(`Cannot update field ${JSON.stringify(path)} of snapshot ${info.name}: only labels are mutable`);
        }
      }
    }
    // containerd stores no empty values: an empty label is a deleted one.
    for (const [k, v] of Object.entries(labels)) if (v === '') delete labels[k];
    validateLabels(labels);
    const now = Math.max(Date.now(), row.updated_ms);
    this.#s.update.run(now, JSON.stringify(labels), row.id);
    return this.#info(this.#s.byId.get(row.id) as Row);
  }

  list(): Info[] {
    return this.#s.all.all().map((r) => this.#info(r));
  }

  ids(): Set<string> {
    return new Set(this.#s.ids.all().map((r) => String(r.id)));
  }

  childKeys(name: string): string[] {
    const row = this.#s.byName.get(name);
    return row === undefined ? [] : this.#s.childKeys.all(row.id).map((r) => r.name);
  }

  keyOf(id: string): string | undefined {
    return this.#s.byId.get(Number(id))?.name;
  }
}

/** The SQLite-backed metadata store. */
export class Metastore {
  readonly #db: DB;
  readonly #statements: Statements;
  readonly #mutex = new Mutex();
  #closed = false;

  private constructor(db: DB) {
    this.#db = db;
    this.#statements = new Statements(db);
  }

  /** Opens or creates the store at `file`; FailedPrecondition when another owner holds it. */
  static open(file: string): Metastore {
    const db = new Database(file, { timeout: 200 });
    try {
      db.pragma('locking_mode = EXCLUSIVE');
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      // Take the exclusive lock now rather than at the first write.
      db.exec('BEGIN EXCLUSIVE');
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > SCHEMA_VERSION) {
        throw new FailedPreconditionError(`Cannot open snapshot metadata ${file}: schema version ${version} is newer than ${SCHEMA_VERSION}`);
      }
      db.exec(SCHEMA);
      db.pragma(`user_version = ${SCHEMA_VERSION}`);
      db.exec('COMMIT');
    } catch (e) {
      db.close();
      if ((e as { code?: string }).code === 'SQLITE_BUSY') {
        throw new FailedPreconditionError(`Cannot open snapshot metadata ${file}: another snapshotter holds it`, { cause: e });
      }
      throw e;
    }
    return new Metastore(db);
  }

  /**
   * Runs `fn` in a transaction; commits when it resolves, rolls back when it throws.
   * Transactions never overlap. `writable` transactions may change records.
   */
  withTransaction<T>(fn: (tx: MetaTransaction) => T | Promise<T>, options: { writable?: boolean } = {}): Promise<T> {
    const writable = options.writable === true;
    return this.#mutex.run(async () => {
      if (this.#closed) throw new FailedPreconditionError('Cannot use the snapshot metadata store: it is closed');
      this.#db.exec(writable ? 'BEGIN IMMEDIATE' : 'BEGIN');
      try {
        const result = await fn(new Transaction(this.#statements, writable));
        this.#db.exec('COMMIT');
        return result;
      } catch (e) {
        if (this.#db.inTransaction) this.#db.exec('ROLLBACK');
        throw e;
      }
    });
  }

  /** Closes the database after running transactions finish; idempotent. */
  close(): Promise<void> {
    return this.#mutex.run(async () => {
      if (this.#closed) return;
      this.#closed = true;
      this.#db.close();
    });
  }
}
