"""The manifest: the published index versions, in one SQLite file, changed only by atomic transactions.

Chroma holds vectors; the manifest holds the truth about which of them each version contains. Every record
(one chunk of one document in one collection) and every document row carries an interval [v_min, v_max): it
is part of version V when v_min <= V < v_max. Publishing version N is one transaction that closes removed
intervals at N, opens new ones at N and moves the `published` pointer; a crash before it leaves version N-1
exactly as it was. The same intervals are mirrored on the Chroma records, so a reader filters by version.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from components.knowledge.chunking import embedding_text

OPEN = 2**31 - 1  # v_max of an interval that is still open
MANIFEST_FILE = "manifest.sqlite"  # in the index folder, beside the embedded Chroma store
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS versions(
  version INTEGER PRIMARY KEY, created_at REAL NOT NULL, collection TEXT NOT NULL,
  embedder TEXT NOT NULL, chunker TEXT NOT NULL, kind TEXT NOT NULL, report TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS docs(
  path TEXT NOT NULL, sha256 TEXT NOT NULL, stale INTEGER NOT NULL, error TEXT, bad_sha TEXT,
  v_min INTEGER NOT NULL, v_max INTEGER NOT NULL, parser TEXT NOT NULL DEFAULT '', PRIMARY KEY (path, v_min));
CREATE TABLE IF NOT EXISTS records(
  id TEXT PRIMARY KEY, collection TEXT NOT NULL, chunk_id TEXT NOT NULL, doc TEXT NOT NULL,
  chunk_hash TEXT NOT NULL, v_min INTEGER NOT NULL, v_max INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS records_by_interval ON records(collection, v_max, v_min);
CREATE INDEX IF NOT EXISTS records_by_hash ON records(collection, chunk_hash);
CREATE TABLE IF NOT EXISTS texts(chunk_hash TEXT PRIMARY KEY, text TEXT NOT NULL, context TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS stat_cache(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
  sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections(name TEXT PRIMARY KEY, embedder TEXT NOT NULL, chunker TEXT NOT NULL,
  removed_since_compact INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS runs(id INTEGER PRIMARY KEY AUTOINCREMENT, finished_at REAL NOT NULL, reason TEXT NOT NULL,
  index_version INTEGER NOT NULL, published INTEGER NOT NULL, changed INTEGER NOT NULL, failed INTEGER NOT NULL,
  duration_s REAL NOT NULL, mlflow_run_id TEXT);
"""
_DOCS_PARSER = "ALTER TABLE docs ADD COLUMN parser TEXT NOT NULL DEFAULT ''"  # manifests written before parser versions
_TEXTS_CONTEXT = "ALTER TABLE texts ADD COLUMN context TEXT NOT NULL DEFAULT ''"  # written before chunk contexts


def manifest_path(index_dir: Path) -> Path:
    """The manifest of the index kept in `index_dir` (params.paths.index)."""
    return index_dir / MANIFEST_FILE


@dataclass(frozen=True)
class Record:
    id: str
    collection: str
    chunk_id: str
    doc: str
    chunk_hash: str
    v_min: int
    v_max: int


@dataclass(frozen=True)
class DocRow:
    """A document in a version. `sha256` is the content its chunks came from (empty if it never parsed);
    a stale row keeps those chunks while the file fails with `error`; `bad_sha` is the failing content.
    `parser` is the identity (name@version) of the parser that last read the file ('' in rows written before
    parsers had versions: they were read by version 1 of their suffix's parser)."""

    path: str
    sha256: str
    stale: bool = False
    error: str | None = None
    bad_sha: str | None = None
    parser: str = ""


@dataclass(frozen=True)
class IndexVersion:
    """A published index version: its collection, the embedder and chunker identities that key it, how it was
    made (`index` or `rollback`) and its report (errors and warnings, JSON)."""

    version: int
    created_at: float
    collection: str
    embedder: str
    chunker: str
    kind: str
    report: str


@dataclass(frozen=True)
class IndexRun:
    """A journaled index run: when it finished, why it ran, what it did, and its MLflow run if it has one."""

    finished_at: float
    reason: str
    index_version: int
    published: bool
    changed: int  # documents added, modified, deleted or renamed
    failed: int  # documents that failed to parse
    duration_s: float
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class FileHashes:
    """The sha256 of every file a run hashed, keyed by (size, mtime_ns), and every file it saw: the stat cache
    keeps the first and forgets files that are gone."""

    hashes: dict[str, tuple[int, int, str]]  # path -> (size, mtime_ns, sha256)
    seen: Collection[str]


@dataclass(frozen=True)
class Publication:
    """What publishing one version changes: the intervals that close and open at `version.version`."""

    version: IndexVersion
    closed_records: list[Record]  # leave the index at this version (in any collection)
    opened_records: list[Record]  # v_min = this version, in version.collection
    texts: dict[str, str]  # chunk_hash -> text of the opened records
    closed_docs: list[str]  # paths whose row changes or goes
    opened_docs: list[DocRow]  # the new rows of those that stay
    file_hashes: FileHashes | None = None  # an index run's stat cache; a rollback leaves it alone
    contexts: dict[str, str] = field(default_factory=dict)  # chunk_hash -> headings embedded with it (if any)


class Manifest:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for table, column, migration in (("docs", "parser", _DOCS_PARSER), ("texts", "context", _TEXTS_CONTEXT)):
            if not self._has_column(table, column):
                with self._transaction() as db:
                    if not self._has_column(table, column):  # another process may have migrated it meanwhile
                        db.execute(migration)

    def close(self) -> None:
        self._db.close()

    def _has_column(self, table: str, column: str) -> bool:
        return any(row[1] == column for row in self._db.execute(f"PRAGMA table_info({table})"))

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- reads -------------------------------------------------------------------------------------------
    def published(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='published'").fetchone()
        return int(row[0]) if row else 0

    def version(self, version: int) -> IndexVersion | None:
        row = self._db.execute(
            "SELECT version, created_at, collection, embedder, chunker, kind, report FROM versions WHERE version=?",
            (version,),
        ).fetchone()
        return IndexVersion(*row) if row else None

    def versions(self) -> list[IndexVersion]:
        rows = self._db.execute(
            "SELECT version, created_at, collection, embedder, chunker, kind, report FROM versions ORDER BY version"
        )
        return [IndexVersion(*r) for r in rows]

    def latest_version_id(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM versions").fetchone()
        return int(row[0] or 0)

    def docs_at(self, version: int) -> dict[str, DocRow]:
        rows = self._db.execute(
            "SELECT path, sha256, stale, error, bad_sha, parser FROM docs WHERE v_min<=? AND v_max>?",
            (version, version),
        )
        return {r[0]: DocRow(r[0], r[1], bool(r[2]), r[3], r[4], r[5]) for r in rows}

    def records_at(self, version: int, collection: str | None = None) -> list[Record]:
        sql = "SELECT id, collection, chunk_id, doc, chunk_hash, v_min, v_max FROM records WHERE v_min<=? AND v_max>?"
        args: tuple = (version, version)
        if collection is not None:
            sql += " AND collection=?"
            args += (collection,)
        return [Record(*r) for r in self._db.execute(sql, args)]

    def records_in(self, collection: str) -> list[Record]:
        rows = self._db.execute(
            "SELECT id, collection, chunk_id, doc, chunk_hash, v_min, v_max FROM records WHERE collection=?",
            (collection,),
        )
        return [Record(*r) for r in rows]

    def vector_sources(self, collection: str, hashes: Iterable[str]) -> dict[str, str]:
        """chunk_hash -> id of a record in `collection` whose stored vector can be copied."""
        out: dict[str, str] = {}
        hashes = list(hashes)
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(
                f"SELECT chunk_hash, id FROM records WHERE collection=? AND chunk_hash IN ({marks})",
                (collection, *part),
            )
            out.update({h: rid for h, rid in rows})
        return out

    def texts(self, hashes: Iterable[str]) -> dict[str, str]:
        """chunk_hash -> the chunk's text, as stored and shown."""
        return {h: text for h, (text, _) in self.texts_and_contexts(hashes).items()}

    def embedding_texts(self, hashes: Iterable[str]) -> dict[str, str]:
        """chunk_hash -> what the embedder read (and BM25 indexes): the chunk's context, then its text."""
        return {h: embedding_text(context, text) for h, (text, context) in self.texts_and_contexts(hashes).items()}

    def texts_and_contexts(self, hashes: Iterable[str]) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        hashes = list(hashes)
        for i in range(0, len(hashes), 500):
            part = hashes[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._db.execute(f"SELECT chunk_hash, text, context FROM texts WHERE chunk_hash IN ({marks})", part)
            out.update((h, (text, context)) for h, text, context in rows)
        return out

    def stat_cache(self) -> dict[str, tuple[int, int, str]]:
        rows = self._db.execute("SELECT path, size, mtime_ns, sha256 FROM stat_cache")
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def collection_removed(self, name: str) -> int:
        row = self._db.execute("SELECT removed_since_compact FROM collections WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def known_collections(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM collections")]

    def runs_since(self, since: float) -> list[IndexRun]:
        """Every index run journaled since `since` (epoch seconds), newest first."""
        rows = self._db.execute(
            "SELECT finished_at, reason, index_version, published, changed, failed, duration_s, mlflow_run_id "
            "FROM runs WHERE finished_at>=? ORDER BY id DESC", (since,))  # fmt: skip
        return [IndexRun(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    def retained_versions(self, keep: int) -> list[int]:
        rows = self._db.execute("SELECT version FROM versions ORDER BY version DESC LIMIT ?", (keep,))
        return sorted(r[0] for r in rows)

    def records_closed_by(self, version: int) -> list[Record]:
        """Records no version from `version` on contains (garbage once `version` is the oldest retained)."""
        rows = self._db.execute(
            "SELECT id, collection, chunk_id, doc, chunk_hash, v_min, v_max FROM records WHERE v_max<=?", (version,)
        )
        return [Record(*r) for r in rows]

    # -- writes: each one transaction ------------------------------------------------------------------------
    def publish(self, pub: Publication) -> None:
        """Commit a version: close the removed intervals at N, open the new ones at N, count the removals towards
        the collection's compaction, and move the `published` pointer, all or nothing."""
        v, n = pub.version, pub.version.version
        with self._transaction() as db:
            db.execute(
                "INSERT INTO versions(version, created_at, collection, embedder, chunker, kind, report) "
                "VALUES (?,?,?,?,?,?,?)",
                (n, v.created_at, v.collection, v.embedder, v.chunker, v.kind, v.report),
            )
            db.execute(
                "INSERT OR IGNORE INTO collections(name, embedder, chunker) VALUES (?,?,?)",
                (v.collection, v.embedder, v.chunker),
            )
            db.executemany("UPDATE records SET v_max=? WHERE id=?", [(n, r.id) for r in pub.closed_records])
            db.executemany(
                "INSERT OR REPLACE INTO records(id, collection, chunk_id, doc, chunk_hash, v_min, v_max) "
                "VALUES (?,?,?,?,?,?,?)",
                [(r.id, r.collection, r.chunk_id, r.doc, r.chunk_hash, r.v_min, r.v_max) for r in pub.opened_records],
            )
            db.executemany("INSERT OR IGNORE INTO texts(chunk_hash, text, context) VALUES (?,?,?)",
                           [(h, text, pub.contexts.get(h, "")) for h, text in pub.texts.items()])  # fmt: skip
            db.executemany("UPDATE docs SET v_max=? WHERE path=? AND v_max=?", [(n, p, OPEN) for p in pub.closed_docs])
            db.executemany(
                "INSERT OR REPLACE INTO docs(path, sha256, stale, error, bad_sha, v_min, v_max, parser) "
                "VALUES (?,?,?,?,?,?,?,?)",
                [(r.path, r.sha256, int(r.stale), r.error, r.bad_sha, n, OPEN, r.parser) for r in pub.opened_docs],
            )
            removed_here = sum(r.collection == v.collection for r in pub.closed_records)
            db.execute(
                "UPDATE collections SET removed_since_compact = removed_since_compact + ? WHERE name=?",
                (removed_here, v.collection),
            )
            if pub.file_hashes is not None:
                _write_file_hashes(db, pub.file_hashes)
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('published', ?)", (str(n),))

    def save_file_hashes(self, hashes: FileHashes) -> None:
        """Remember (size, mtime_ns) -> sha256 of every file hashed, so the next run skips hashing it. Always
        true of the bytes, so it is safe to write at any time; what is indexed is decided by the docs rows."""
        with self._transaction() as db:
            _write_file_hashes(db, hashes)

    def forget_before(self, oldest: int, collections: Collection[str]) -> None:
        """Garbage collection: drop the rows no version from `oldest` on sees, every row of `collections`
        (referenced by no retained version), and the texts no record uses any more."""
        with self._transaction() as db:
            db.execute("DELETE FROM records WHERE v_max<=?", (oldest,))
            for name in collections:
                db.execute("DELETE FROM records WHERE collection=?", (name,))
                db.execute("DELETE FROM collections WHERE name=?", (name,))
            db.execute("DELETE FROM docs WHERE v_max<=?", (oldest,))
            db.execute("DELETE FROM versions WHERE version<?", (oldest,))
            db.execute("DELETE FROM texts WHERE chunk_hash NOT IN (SELECT chunk_hash FROM records)")

    def switch_collection(self, old: str, new: str) -> None:
        """Compaction: every version and record of `old` now lives in `new` (same key, churn count reset)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO collections(name, embedder, chunker, removed_since_compact) "
                "SELECT ?, embedder, chunker, 0 FROM collections WHERE name=?",
                (new, old),
            )
            db.execute("UPDATE versions SET collection=? WHERE collection=?", (new, old))
            db.execute("UPDATE records SET collection=? WHERE collection=?", (new, old))
            db.execute("DELETE FROM collections WHERE name=?", (old,))

    def journal_run(self, run: IndexRun) -> None:
        """One row per index run, whatever it did: the history of runs that changed nothing lives here only."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs(finished_at, reason, index_version, published, changed, failed, duration_s, "
                "mlflow_run_id) VALUES (?,?,?,?,?,?,?,?)",
                (run.finished_at, run.reason, run.index_version, int(run.published), run.changed, run.failed,
                 run.duration_s, run.mlflow_run_id))  # fmt: skip


def _write_file_hashes(db: sqlite3.Connection, hashes: FileHashes) -> None:
    rows = [(p, size, mtime_ns, sha) for p, (size, mtime_ns, sha) in hashes.hashes.items()]
    db.executemany("INSERT OR REPLACE INTO stat_cache(path, size, mtime_ns, sha256) VALUES (?,?,?,?)", rows)
    seen = set(hashes.seen)
    gone = [(p,) for (p,) in db.execute("SELECT path FROM stat_cache") if p not in seen]
    db.executemany("DELETE FROM stat_cache WHERE path=?", gone)
